"""One trajectory through a differentiable system: a single ``lax.scan``.

A trajectory with fixed noise is a deterministic function of the policy
parameters ``w`` (docs/theory.md §1):

    a_t     = π(s_t, ε_t; w)                 t = 0..n
    s_{t+1} = f(s_t, a_t, ξ_t)               t = 0..n-1
    r_t     = r(s_t, a_t)                    t = 0..n-1

``unroll`` computes it for ONE start state; callers batch with ``jax.vmap``
(``objectives.pathwise_objective`` does). Reverse-mode autodiff of anything
computed from the returned ``Trajectory`` is the pathwise gradient, i.e. the
recursion dw s_{t+1} = ∂a f · dw a_t + ∂s f · dw s_t, dw s_0 = 0.

Episode termination: with ``done(state) -> bool``, ``alive_t`` is 1 for the
states before the first state s_T for which ``done`` holds and 0 from s_T on:
r_{T-1} (the transition into s_T) counts, r_T, r_{T+1}, … are zeroed and no
bootstrap is taken at or after s_T. From s_T on the state is frozen: the carry
is ``lax.stop_gradient(s_T)`` repeated, so nothing past the end of an episode (a
simulator that keeps integrating, returns garbage or even NaN) feeds the values
or the gradient; the recorded states after s_T repeat s_T.

The gradient half of that promise needs more than a ``where`` after the dead
steps: ``where`` gives ``step`` and ``reward`` a zero cotangent there, and reverse
mode multiplies it by their Jacobian at the frozen state, 0 · NaN = NaN for a
system undefined past its terminal state (sqrt(1 − s) beyond s = 1, a body under
the floor). So at dead steps the state and action handed to ``step`` and
``reward`` (and, in ``objectives``, to the bootstrap) are
``where(alive, x, stop_gradient(x))`` — the "double where": the same values, and
an exact zero cotangent that no downstream NaN can multiply. The policy itself
still runs on the frozen s_T (a finite state it has seen alive) with parameters
that keep their gradient path; its cotangent there is an exact zero too. The
recorded s_t is the ungated one, so s_T keeps its gradient for a time-limit
bootstrap read off the trajectory.

A reward must be a scalar per state; a shape-(1,) reward (``-(s[0]**2 + a**2)``
with a 1-D action) is rejected at trace time rather than broadcast into a wrong J.

This module imports no environment, agent or experiment.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

PyTree = Any


class Trajectory(NamedTuple):
    """What ``unroll`` returns for one start state (add a leading batch axis under vmap).

    states:  s_0..s_n, leading axis n+1 (a pytree like the start state).
    actions: a_0..a_n, leading axis n+1 (a_n is the action fed to a bootstrap critic).
    rewards: r_0..r_{n-1}, shape [n]; already zeroed after termination.
    alive:   [n+1] float, 1.0 while the episode runs (alive_0 = 1 unless done(s_0)).
    """

    states: PyTree
    actions: jax.Array
    rewards: jax.Array
    alive: jax.Array


class TransitionReward:
    """Marks a reward read off the transition: ``fn(state, action, next_state)``.

    Simulators such as Brax compute the reward inside ``step``; wrapping
    ``lambda s, a, s_next: s_next.reward`` in ``transition_reward`` lets the
    engine read it without stepping twice.
    """

    uses_next_state = True

    def __init__(self, fn: Callable[[PyTree, jax.Array, PyTree], jax.Array]):
        self.fn = fn

    def __call__(self, state, action, next_state):
        return self.fn(state, action, next_state)

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"transition_reward({self.fn!r})"


def transition_reward(fn: Callable[[PyTree, jax.Array, PyTree], jax.Array]) -> TransitionReward:
    """Wrap ``fn(state, action, next_state) -> r`` for use as the engine's ``reward``."""
    return TransitionReward(fn)


def _call_reward(reward, state, action, next_state):
    if getattr(reward, "uses_next_state", False):
        return reward(state, action, next_state)
    return reward(state, action)


def _check_reward_shape(r) -> None:
    """Trace-time check: a reward of shape (1,) would broadcast into a wrong, plausible J."""
    if jnp.shape(r) != ():
        raise ValueError(
            f"reward: expected a scalar per state (shape ()), got shape {jnp.shape(r)}; "
            "index or sum the action/state terms, e.g. -(s[0]**2 + 0.01 * a[0]**2)"
        )


def _select(pred, on_true: PyTree, on_false: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda x, y: jnp.where(pred, x, y), on_true, on_false)


def gate_gradient(live, tree: PyTree) -> PyTree:
    """``tree`` where ``live``, else ``stop_gradient(tree)``: same values, no cotangent when dead.

    ``where``'s cotangent for the branch it did not select is an exact zero (a select,
    not a product), so whatever NaN a downstream Jacobian produces at a dead step stops
    here. ``live`` is a bool array over the leading axes of every leaf (a scalar for one
    state, [T] for a trajectory's states). Integer leaves (no gradient) pass unchanged.
    """
    live = jnp.asarray(live)

    def one(x):
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            return x
        if x.shape[: live.ndim] != live.shape:
            raise ValueError(f"gate_gradient: live {live.shape} must match the leading axes of every leaf, "
                             f"got a leaf of shape {x.shape}")
        m = jnp.reshape(live, live.shape + (1,) * (x.ndim - live.ndim))
        return jnp.where(m, x, lax.stop_gradient(x))

    return jax.tree_util.tree_map(one, tree)


def _parse_remat(remat, horizon: int):
    """(per-step checkpoint wrapper, segment length or None) for ``unroll``'s ``remat``."""
    if remat is False or remat is None:
        return (lambda body: body), None
    if remat is True:
        return jax.checkpoint, None
    if isinstance(remat, str):
        if remat == "nested":
            return jax.checkpoint, max(1, int(math.ceil(math.sqrt(horizon))))
    elif isinstance(remat, (int, np.integer)) and not isinstance(remat, bool):
        if remat >= 1:
            return jax.checkpoint, int(remat)
    elif callable(remat):  # a jax.checkpoint_policies entry
        return (lambda body: jax.checkpoint(body, policy=remat)), None
    raise ValueError(
        "remat: expected False, True, a jax.checkpoint policy, 'nested' or a segment length "
        f"(int >= 1), got {remat!r}"
    )


def _segmented_scan(body, carry, xs, horizon: int, segment: Optional[int]):
    """``lax.scan(body, carry, xs, length=horizon)`` in checkpointed segments of ``segment`` steps.

    An outer scan runs ``horizon // segment`` segments; each segment is an inner scan
    of ``segment`` steps wrapped in ``jax.checkpoint``, so the backward pass keeps one
    carry per segment and, while it differentiates one segment, one carry per step of
    that segment: memory O((horizon / segment + segment) · |carry|), O(√horizon · |carry|)
    for segment ≈ √horizon, at the price of one more forward recomputation than
    per-step checkpointing (Griewank & Walther 2000, "Revolve"; Chen et al. 2016,
    "Training deep nets with sublinear memory cost"). A remainder of
    ``horizon % segment`` steps runs as one more checkpointed segment. The same step
    function runs in the same order, so the outputs are the plain scan's; gradients
    w.r.t. closed-over values (the policy parameters) are summed segment by segment,
    which changes only the float rounding of that sum.
    """
    if segment is None or segment >= horizon:
        return lax.scan(body, carry, xs, length=horizon)
    n_seg, rem = divmod(horizon, segment)

    def run(length):
        def seg(c, seg_xs):
            return lax.scan(body, c, seg_xs, length=length)

        return jax.checkpoint(seg, prevent_cse=False)

    head = jax.tree_util.tree_map(lambda x: x[: n_seg * segment].reshape((n_seg, segment) + x.shape[1:]), xs)
    carry, ys = lax.scan(run(segment), carry, head, length=n_seg)
    ys = jax.tree_util.tree_map(lambda y: y.reshape((n_seg * segment,) + y.shape[2:]), ys)
    if rem:
        tail = jax.tree_util.tree_map(lambda x: x[n_seg * segment:], xs)
        carry, ys_tail = run(rem)(carry, tail)
        ys = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], 0), ys, ys_tail)
    return carry, ys


def unroll(
    policy: Callable[[PyTree, PyTree, Any], jax.Array],
    params: PyTree,
    step: Callable[[PyTree, jax.Array, Any], PyTree],
    reward: Callable[..., jax.Array],
    state: PyTree,
    *,
    horizon: int,
    policy_noise: Optional[PyTree] = None,
    dynamics_noise: Optional[PyTree] = None,
    done: Optional[Callable[[PyTree], jax.Array]] = None,
    remat: Any = False,
) -> Trajectory:
    """Roll one trajectory of ``horizon`` steps from ``state`` (no batch axis).

    Args:
      policy: ``policy(params, state, eps) -> action``.
      params: the policy parameters (any pytree); gradients flow to them.
      step: ``step(state, action, xi) -> next_state``.
      reward: ``reward(state, action) -> scalar`` or a ``transition_reward``.
      state: the start state s_0 (any pytree, no batch axis).
      horizon: n >= 0, a Python int (static: changing it recompiles).
      policy_noise: ε_0..ε_n with leading axis n+1, or None (the policy gets None).
      dynamics_noise: ξ_0..ξ_{n-1} with leading axis n, or None (step gets None).
      done: optional ``done(state) -> bool`` ending the episode.
      remat: how the backward pass trades recomputation for memory:
        False: keep every step's intermediates, memory O(n · |step intermediates|);
        True: ``jax.checkpoint`` each step, memory O(n · |state|), one extra forward;
        a ``jax.checkpoint_policies`` policy: per-step checkpoint saving what it allows;
        an int k >= 1: checkpointed segments of k steps (each step checkpointed too),
        memory O((n/k + k) · |state|), two extra forwards;
        ``"nested"``: segments of k = ceil(√n) steps, memory O(√n · |state|).
        The trajectory does not depend on ``remat``; gradients agree up to float
        rounding (segments sum the parameter cotangent in a different order).
    """
    alive0 = jnp.asarray(1.0)
    if done is not None:
        alive0 = 1.0 - jnp.asarray(done(state), dtype=jnp.float32)

    eps_seq = policy_noise
    eps_last = None
    eps_scan = None
    if eps_seq is not None:
        eps_scan = jax.tree_util.tree_map(lambda e: e[:horizon], eps_seq)
        eps_last = jax.tree_util.tree_map(lambda e: e[horizon], eps_seq)

    def body(carry, noise):
        s, alive = carry
        eps, xi = noise
        live = alive > 0
        # Dead steps see stop-gradient inputs ("double where"): the `where` below gives the
        # step and reward a zero cotangent, and zero times a Jacobian that is NaN past the
        # terminal state (sqrt of a negative, a body under the floor) is NaN; the zero
        # must be made before those functions, not only after them. The recorded s_t is
        # the ungated one: s_T itself (a time-limit end) keeps its gradient for critics.
        s_in = gate_gradient(live, s) if done is not None else s
        a = policy(params, s_in, eps)
        a_in = gate_gradient(live, a) if done is not None else a
        s_next = step(s_in, a_in, xi)
        r = _call_reward(reward, s_in, a_in, s_next)
        _check_reward_shape(r)
        r = jnp.where(live, r, jnp.zeros_like(r))
        if done is not None:
            alive_next = alive * (1.0 - jnp.asarray(done(s_next), dtype=alive.dtype))
            # Past the end of the episode: freeze the state and cut the gradient path.
            s_next = _select(live, s_next, lax.stop_gradient(s))
        else:
            alive_next = alive
        return (s_next, alive_next), (s, a, r, alive)

    wrap, segment = _parse_remat(remat, horizon)
    body = wrap(body)
    if horizon > 0:
        (s_n, alive_n), (states, actions, rewards, alives) = _segmented_scan(
            body, (state, alive0), (eps_scan, dynamics_noise), horizon, segment
        )
    else:
        s_n, alive_n = state, alive0
        states = actions = rewards = alives = None

    a_n = policy(params, s_n, eps_last)

    def append(seq, last):
        if seq is None:
            return jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], last)
        return jax.tree_util.tree_map(lambda xs, x: jnp.concatenate([xs, jnp.asarray(x)[None]], 0), seq, last)

    all_states = append(states, s_n)
    all_actions = append(actions, a_n)
    all_alive = append(alives, alive_n)
    if rewards is None:
        rewards = jnp.zeros((0,), dtype=jnp.result_type(float))
    return Trajectory(all_states, all_actions, rewards, all_alive)
