"""Score-function (likelihood-ratio) estimators and the DPMB-SF hybrid (docs/theory.md §2).

Every surrogate acts on ONE trajectory (time on axis 0) and returns a scalar whose
``jax.grad`` is the estimator; batch with ``jax.vmap`` and average. Conventions
follow ``mbpo_grad.returns``: ``discounts[t] = γ·(1 − terminal_{t+1})``, so the
weight of step t in the discounted objective J = E[Σ_t γ^t r_t] is

    w_t = Π_{k<t} discounts_k            (w_0 = 1; γ^t while alive, 0 after a terminal)

REINFORCE with reward-to-go (Williams 1992; the policy-gradient theorem of Sutton
et al. 2000 in its sampled form):

    ∇J = E[ Σ_t w_t ∇ log π(a_t|s_t) (G_t − b(s_t)) ],  G_t = r_t + discounts_t G_{t+1}

The factor w_t makes it the gradient of the discounted objective (dropping it, as
many implementations do, gives the gradient of a different, undiscounted-visitation
objective; ``weight_by_discount=False`` offers that variant). Any baseline b that
depends on s_t only leaves it unbiased.

GAE(γ, λ) (Schulman et al. 2016) replaces G_t − b(s_t) by A_t = Σ_l (γλ)^l δ_{t+l}.
With the TRUE value function v_π, E[δ_{t+l} | s_t, a_t] = 0 for l ≥ 1 and
E[δ_t | s_t, a_t] = q(s_t, a_t) − v(s_t), so every λ ∈ [0, 1] is unbiased; with an
approximate v only λ = 1 is (up to the bootstrap at the window's end).
``mbpo_grad.tabular.gae_expected_gradient`` gives the exact mean for any v and λ.

DPMB-SF hybrid: the trajectory has a discrete part z_t ~ p(z | s_t, a_t) whose
log-density is known (a friction mode, a contact state, a categorical object
state), the rest deterministic given z. With the mode sequence z fixed, the
states, actions and rewards are differentiable functions of w, and with
R(z, w) = Σ_k w_k r_k + w_T V_T the (bootstrapped) return,

    J(w) = Σ_z Π_t p(z_t | s_t(w), a_t(w)) R(z, w)
    ∇J   = E_z[ ∇_w R(z, w) + Σ_t ∇_w log p(z_t | s_t, a_t) · C_t ]

where ∇_w is the TOTAL derivative along the trajectory (through s_t, which
depends on w via earlier actions: the score term is differentiated pathwise too).
Differentiating Π_t p_t gives the factor C_t = R for every t; any term X of R
that is a function of z_{<t} (and w) only can be dropped from C_t, since s_t and
a_t are functions of (z_{<t}, w) and

    E[ ∇ log p(z_t | s_t, a_t) · X ] = E_{z<t}[ X · ∇_w Σ_{z_t} p(z_t | s_t, a_t) ] = E_{z<t}[ X · ∇_w 1 ] = 0.

Which terms are functions of z_t: s_k depends on z_{<k}; the weight
w_k = Π_{j<k} d_j on z_{<k} (d_j = γ(1 − terminal_{j+1}) reads s_{j+1}); V_T on
z_{<T} (all of them). The reward decides the rest:

    r_k = r(s_k, a_k)            depends on z_{<k}:  C_t = Σ_{k>t} w_k r_k + w_T V_T = w_{t+1} G_{t+1}
    r_k = r(s_k, a_k, s_{k+1})   depends on z_{≤k}:  C_t = Σ_{k≥t} w_k r_k + w_T V_T = w_t G_t
      (``mg.transition_reward``: r_t reads s_{t+1} = f(s_t, a_t, z_t))

Dropping r_t from C_t for a transition reward drops a term that z_t moves, and
the estimator is biased (on ``envs.switching_cart`` with r = −(x'² + 0.1a²), up
to 23 standard errors at 40k trajectories); keeping it for a state-action reward
is unbiased but adds variance. The weights w_k are piecewise constant in w (no
pathwise derivative); their dependence on the modes is carried by the scores. A baseline enters as C_t − w_t b_t: any b_t that
is a function of (s_t, a_t, z_{<t}) keeps the estimator unbiased (w_t is, too).
Reference: the DPMB-SF estimator of the policy-parametrisation chapter
(``shared/reference``), here unrolled over n steps with either reward kind.

Termination: with ``done(state) -> bool`` the step t is live while alive_t = 1
(the engine's convention, ``mbpo_grad.rollout``); after the end of the episode the
state is frozen, rewards and log-probabilities are zeroed, and the policy, step,
reward and mode logits see stop-gradient inputs, so a system that is undefined
past its terminal state (NaN values or Jacobians there) leaves the gradient finite.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mbpo_grad import validation as V
from mbpo_grad.returns import gae, reward_to_go
from mbpo_grad.rollout import _call_reward, _select, gate_gradient

PyTree = Any
sg = lax.stop_gradient


# ---------------------------------------------------------------------------- checks

def _check_1d(x, name: str, length: Optional[int] = None) -> int:
    shape = jnp.shape(x)
    if len(shape) != 1:
        raise ValueError(f"{name} must be one trajectory of shape [T] (batch with jax.vmap); got shape {tuple(shape)}")
    if length is not None and shape[0] != length:
        raise ValueError(f"{name} must have length {length} to match rewards; got shape {tuple(shape)}")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(f"{name} must be floating point, got dtype {jnp.result_type(x)}")
    return shape[0]


def discount_weights(discounts: jax.Array) -> jax.Array:
    """w_t = Π_{k<t} discounts_k, shape [T] (w_0 = 1): the weight of step t in J."""
    _check_1d(discounts, "discounts")
    return jnp.concatenate([jnp.ones_like(discounts[:1]), jnp.cumprod(discounts[:-1])])


# ---------------------------------------------------------------------------- REINFORCE / GAE

def reinforce_surrogate(
    log_probs: jax.Array,
    rewards: jax.Array,
    discounts: jax.Array,
    baseline: Optional[jax.Array] = None,
    *,
    weight_by_discount: bool = True,
) -> jax.Array:
    """Σ_t w_t log π(a_t|s_t) · stop_grad(G_t − b_t); its gradient is REINFORCE with reward-to-go.

    Args:
      log_probs: [T] log π(a_t | s_t) as functions of the policy parameters, with
        states and actions treated as data (see ``trajectory_log_probs``).
      rewards: [T] sampled rewards (no gradient is taken through them).
      discounts: [T] γ·(1 − terminal_{t+1}).
      baseline: optional [T] b(s_t) (any function of s_t only keeps it unbiased).
      weight_by_discount: multiply step t by w_t = Π_{k<t} discounts_k (the exact
        gradient of the discounted objective); False drops it (the common variant).
    """
    T = _check_1d(rewards, "rewards")
    _check_1d(log_probs, "log_probs", T)
    _check_1d(discounts, "discounts", T)
    adv = reward_to_go(sg(rewards), sg(discounts))
    if baseline is not None:
        _check_1d(baseline, "baseline", T)
        adv = adv - sg(baseline)
    w = discount_weights(sg(discounts)) if weight_by_discount else jnp.ones_like(adv)
    return jnp.sum(w * log_probs * sg(adv))


def gae_surrogate(
    log_probs: jax.Array,
    rewards: jax.Array,
    values: jax.Array,
    discounts: jax.Array,
    lam,
    *,
    weight_by_discount: bool = True,
) -> jax.Array:
    """Σ_t w_t log π(a_t|s_t) · stop_grad(A_t^{GAE(γ,λ)}); values [T+1] (v_T bootstraps the window).

    λ may be traced (vmappable). λ = 1 gives reward-to-go with v as baseline
    (plus the bootstrap γ^{T−t} v(s_T)); λ = 0 the one-step TD error.
    """
    T = _check_1d(rewards, "rewards")
    _check_1d(log_probs, "log_probs", T)
    _check_1d(discounts, "discounts", T)
    _check_1d(values, "values", T + 1)
    V.check_unit_interval(lam, "lam")
    adv = gae(sg(rewards), sg(values), sg(discounts), lam)
    w = discount_weights(sg(discounts)) if weight_by_discount else jnp.ones_like(adv)
    return jnp.sum(w * log_probs * sg(adv))


def trajectory_log_probs(log_prob: Callable, params: PyTree, observations: PyTree, actions: jax.Array) -> jax.Array:
    """[T] log π(a_t | o_t; params) with observations and actions as data (stop-gradient).

    ``log_prob(params, obs, action) -> scalar`` for one observation (a policy
    bundle's ``log_prob``); mapped over the leading (time) axis.
    """
    V.check_callable(log_prob, "log_prob", "log_prob(params, obs, action) -> scalar")
    obs, act = sg(observations), sg(actions)
    return jax.vmap(lambda o, a: log_prob(params, o, a))(obs, act)


# ---------------------------------------------------------------------------- baselines

def baseline_loss(values: jax.Array, targets: jax.Array, weights: Optional[jax.Array] = None) -> jax.Array:
    """½ · weighted mean of (v(s) − stop_grad(target))²: value regression for a learned baseline.

    Any shape (values and targets equal); ``weights`` (same shape) mask padded or
    post-terminal steps. Minimising it over a function of the state gives the
    conditional mean E[G | s] (the value) as the baseline.
    """
    if jnp.shape(values) != jnp.shape(targets):
        raise ValueError(f"targets must have the shape of values {jnp.shape(values)}, got {jnp.shape(targets)}")
    err2 = (values - sg(targets)) ** 2
    if weights is None:
        return 0.5 * jnp.mean(err2)
    if jnp.shape(weights) != jnp.shape(values):
        raise ValueError(f"weights must have the shape of values {jnp.shape(values)}, got {jnp.shape(weights)}")
    weights = sg(weights)
    return 0.5 * jnp.sum(weights * err2) / jnp.maximum(jnp.sum(weights), 1e-12)


def fit_baseline(
    apply: Callable[[PyTree, Any], jax.Array],
    params: PyTree,
    inputs: PyTree,
    targets: jax.Array,
    optimizer,
    *,
    num_steps: int,
    weights: Optional[jax.Array] = None,
):
    """Full-batch regression of a baseline ``apply(params, x) -> scalar`` on (inputs, targets).

    ``inputs`` has a leading axis N matching ``targets`` [N] (flatten time and batch
    first); ``optimizer`` is an optax ``GradientTransformation``. One ``lax.scan``
    over ``num_steps`` (static). Returns ``(params, losses [num_steps])``.
    """
    V.check_callable(apply, "apply", "apply(params, x) -> scalar")
    num_steps = V.check_horizon(num_steps, "num_steps")
    if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
        raise TypeError(f"optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}")
    import optax

    def loss_fn(p):
        pred = jax.vmap(lambda x: jnp.reshape(apply(p, x), ()))(inputs)
        return baseline_loss(pred, targets, weights)

    def body(carry, _):
        p, opt_state = carry
        loss, g = jax.value_and_grad(loss_fn)(p)
        updates, opt_state = optimizer.update(g, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), loss

    (params, _), losses = lax.scan(body, (params, optimizer.init(params)), None, length=num_steps)
    return params, losses


# ---------------------------------------------------------------------------- DPMB-SF hybrid

def dpmb_sf_surrogate(
    rewards: jax.Array,
    transition_log_probs: jax.Array,
    discounts: jax.Array,
    *,
    bootstrap: Optional[jax.Array] = None,
    baseline: Optional[jax.Array] = None,
    reward_uses_next_state: bool = True,
) -> jax.Array:
    """Pathwise return plus the score terms of the stochastic transitions; value = the return.

        L = Σ_t w_t r_t + w_T V_T + Σ_t (log p_t − stop_grad(log p_t)) · stop_grad(C_t − w_t b_t)

        C_t = w_t G_t         = Σ_{k≥t} w_k r_k + w_T V_T   (reward_uses_next_state=True)
        C_t = w_{t+1} G_{t+1} = Σ_{k>t} w_k r_k + w_T V_T   (reward_uses_next_state=False)

    with G_t = r_t + discounts_t G_{t+1}, G_T = V_T, so log p(z_t | s_t, a_t)
    multiplies exactly the terms of the return that z_t can move (module docstring).
    The correction term is zero in value (so ``L`` reports the sampled return) and
    contributes Σ_t ∇ log p_t · (C_t − w_t b_t) to the gradient.

    Args:
      rewards: [T] rewards along a trajectory with the modes held fixed,
        DIFFERENTIABLE in the policy parameters (pathwise part).
      transition_log_probs: [T] log p(z_t | s_t, a_t), differentiable through
        s_t and a_t (do NOT stop-gradient the states: the total derivative is needed).
      discounts: [T] γ·(1 − terminal_{t+1}).
      bootstrap: optional scalar V(s_T) (or Q(s_T, a_T)) for the tail.
      baseline: optional [T] control variate b_t for C_t / w_t (for G_t, or for
        discounts_t G_{t+1} with ``reward_uses_next_state=False``); any function
        of (s_t, a_t) and the earlier modes (not of z_t) keeps it unbiased.
      reward_uses_next_state: True when r_t reads s_{t+1} (``mg.transition_reward``,
        a reward computed inside the simulator's step): r_t is then a function of
        z_t and belongs in its factor. False for r_t = r(s_t, a_t) drops it (less
        variance). True is unbiased for both kinds; False with a transition reward
        is biased.
    """
    T = _check_1d(rewards, "rewards")
    _check_1d(transition_log_probs, "transition_log_probs", T)
    _check_1d(discounts, "discounts", T)
    if not isinstance(reward_uses_next_state, (bool, np.bool_)):
        raise TypeError(f"reward_uses_next_state must be a bool, got {type(reward_uses_next_state).__name__}")
    zero = jnp.zeros_like(rewards[:1])
    if bootstrap is None:
        boot = zero
    else:
        if jnp.size(bootstrap) != 1 or jnp.ndim(bootstrap) > 1:
            raise ValueError(f"bootstrap must be a scalar V(s_T), got shape {jnp.shape(bootstrap)}")
        boot = jnp.reshape(jnp.asarray(bootstrap, dtype=rewards.dtype), (1,))
    # G over the extended window: G_ext[t] = r_t + d_t G_ext[t+1], G_ext[T] = V_T.
    G_ext = reward_to_go(jnp.concatenate([rewards, boot]), jnp.concatenate([discounts, zero]))
    w_ext = jnp.concatenate([jnp.ones_like(zero), jnp.cumprod(discounts)])  # w_0..w_T
    wG = w_ext * G_ext  # wG[t] = Σ_{k≥t} w_k r_k + w_T V_T
    pathwise = wG[0]
    factor = wG[:-1] if reward_uses_next_state else wG[1:]
    if baseline is not None:
        _check_1d(baseline, "baseline", T)
        factor = factor - w_ext[:-1] * baseline
    lp = transition_log_probs
    return pathwise + jnp.sum((lp - sg(lp)) * sg(factor))


class HybridTrajectory(NamedTuple):
    """One trajectory of a system with a discrete stochastic transition part.

    states [T+1] (pytree), actions [T], modes [T] int, rewards [T],
    log_probs [T] = log p(z_t | s_t, a_t) (differentiable through s_t, a_t),
    alive [T+1] (1.0 while the episode runs; all ones without ``done``).
    After the end of an episode the states repeat the terminal state, and the
    rewards and log_probs are 0 (the modes there do not matter; sampled ones are 0).
    """

    states: PyTree
    actions: jax.Array
    modes: jax.Array
    rewards: jax.Array
    log_probs: jax.Array
    alive: jax.Array


def hybrid_unroll(
    policy: Callable[[PyTree, PyTree, Any], jax.Array],
    params: PyTree,
    step: Callable[[PyTree, jax.Array, jax.Array], PyTree],
    reward: Callable[..., jax.Array],
    mode_logits: Callable[[PyTree, jax.Array], jax.Array],
    state: PyTree,
    *,
    horizon: int,
    mode_noise: Optional[jax.Array] = None,
    modes: Optional[jax.Array] = None,
    policy_noise: Optional[PyTree] = None,
    done: Optional[Callable[[PyTree], jax.Array]] = None,
) -> HybridTrajectory:
    """Roll one hybrid trajectory with ``lax.scan``: a_t = π(s_t, ε_t), z_t ~ softmax(logits(s_t, a_t)), s_{t+1} = f(s_t, a_t, z_t).

    Args:
      policy: ``policy(params, state, eps) -> action``.
      step: ``step(state, action, mode) -> next_state`` with an integer mode.
      reward: ``reward(state, action) -> scalar`` (or ``mg.transition_reward``).
      mode_logits: ``mode_logits(state, action) -> [K]`` unnormalised log-probabilities.
      state: s_0 (no batch axis).
      horizon: T (static).
      mode_noise: [T, K] standard Gumbel noise; z_t = argmax(logits_t + g_t) (Gumbel-max),
        which draws z_t ~ softmax(logits_t) exactly.
      modes: [T] integer modes to follow instead (for exact enumeration); give
        exactly one of ``mode_noise`` and ``modes``.
      policy_noise: ε_0..ε_{T−1} with leading axis T, or None.
      done: optional ``done(state) -> bool`` ending the episode (``mbpo_grad.rollout``'s
        convention: r_t counts while alive_t; the state freezes at the first done state).
        Dead steps see stop-gradient inputs, so nothing past the end reaches the gradient.
    """
    horizon = V.check_horizon(horizon)
    if horizon == 0:
        raise ValueError("horizon must be >= 1 for a hybrid trajectory")
    for fn, name, sig in (
        (policy, "policy", "policy(params, state, eps) -> action"),
        (step, "step", "step(state, action, mode) -> next_state"),
        (reward, "reward", "reward(state, action) -> scalar"),
        (mode_logits, "mode_logits", "mode_logits(state, action) -> [K]"),
    ):
        V.check_callable(fn, name, sig)
    V.check_callable(done, "done", "done(state) -> bool", optional=True)
    if (mode_noise is None) == (modes is None):
        raise ValueError("mode_noise / modes: give exactly one (Gumbel noise [T, K] to sample, or modes [T] to follow)")
    if mode_noise is not None:
        if jnp.ndim(mode_noise) != 2 or jnp.shape(mode_noise)[0] != horizon:
            raise ValueError(f"mode_noise must have shape [horizon, K] = [{horizon}, K]; got {jnp.shape(mode_noise)}")
        xs_modes = (mode_noise, None)
    else:
        if jnp.shape(modes) != (horizon,):
            raise ValueError(f"modes must have shape [horizon] = [{horizon}]; got {jnp.shape(modes)}")
        if not jnp.issubdtype(jnp.result_type(modes), jnp.integer):
            raise TypeError(f"modes must be integers, got dtype {jnp.result_type(modes)}")
        xs_modes = (None, modes)
    for leaf in jax.tree_util.tree_leaves(policy_noise):
        if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != horizon:
            raise ValueError(f"policy_noise must have leading axis horizon = {horizon}; got shape {jnp.shape(leaf)}")
    alive0 = jnp.asarray(1.0)
    if done is not None:
        alive0 = 1.0 - jnp.asarray(done(state), dtype=alive0.dtype)

    def body(carry, x):
        s, alive = carry
        (g, z_given), eps = x
        live = alive > 0
        s_in = gate_gradient(live, s) if done is not None else s
        a = policy(params, s_in, eps)
        a_in = gate_gradient(live, a) if done is not None else a
        logits = mode_logits(s_in, a_in)
        if jnp.ndim(logits) != 1:
            raise ValueError(f"mode_logits must return [K] logits for one state, got shape {jnp.shape(logits)}")
        if g is not None and jnp.shape(g) != jnp.shape(logits):
            raise ValueError(f"mode_noise must have shape [horizon, K] with K = {jnp.shape(logits)[0]} modes; "
                             f"got [{horizon}, {jnp.shape(g)[0]}]")
        logp_all = jax.nn.log_softmax(logits)
        z = jnp.argmax(sg(logits) + g) if z_given is None else z_given
        s_next = step(s_in, a_in, z)
        r = _call_reward(reward, s_in, a_in, s_next)
        r = jnp.reshape(r, ())
        logp = logp_all[z]
        if done is not None:
            r = jnp.where(live, r, jnp.zeros_like(r))
            logp = jnp.where(live, logp, jnp.zeros_like(logp))
            if z_given is None:
                z = jnp.where(live, z, jnp.zeros_like(z))
            alive_next = alive * (1.0 - jnp.asarray(done(s_next), dtype=alive.dtype))
            s_next = _select(live, s_next, sg(s))
        else:
            alive_next = alive
        return (s_next, alive_next), (s, a, z, r, logp, alive)

    (s_T, alive_T), (states, actions, zs, rewards, logps, alives) = lax.scan(
        body, (state, alive0), (xs_modes, policy_noise), length=horizon)
    all_states = jax.tree_util.tree_map(lambda xs, x: jnp.concatenate([xs, x[None]], 0), states, s_T)
    all_alive = jnp.concatenate([alives, alive_T[None]])
    return HybridTrajectory(all_states, actions, zs, rewards, logps, all_alive)


def _hybrid_discounts(alive: jax.Array, gamma) -> jax.Array:
    """[T] γ·alive_{t+1}: the surrogate's discounts_t = γ(1 − terminal_{t+1}) while alive_t (0 after)."""
    return jnp.asarray(gamma, dtype=jnp.result_type(float)) * alive[1:]


def dpmb_sf_objective(
    policy, params, step, reward, mode_logits, states, *, horizon, mode_noise, gamma=1.0,
    policy_noise=None, bootstrap=None, score_function: bool = True, done=None,
) -> jax.Array:
    """Batch mean of ``dpmb_sf_surrogate`` over hybrid trajectories; ``jax.grad`` it.

    states: start states with leading axis B; mode_noise: Gumbel [horizon, B, K];
    policy_noise: [horizon, B, ...] or None; bootstrap: ``V(state) -> scalar`` or None
    (dropped for episodes that ended); done: ``done(state) -> bool`` or None.
    The reward's kind picks the score factor: ``mg.transition_reward`` (r_t reads s_{t+1},
    so r_t multiplies the score of z_t) or ``reward(s, a)`` (it does not).
    ``score_function=False`` drops the score terms: the pure pathwise gradient with the
    modes held fixed, which is BIASED whenever p(z | s, a) depends on the parameters.
    """
    batch = V.check_states(states, "states")
    horizon = V.check_horizon(horizon)
    V.check_noise(mode_noise, "mode_noise", horizon, batch, "horizon")
    V.check_noise(policy_noise, "policy_noise", horizon, batch, "horizon")
    V.check_unit_interval(gamma, "gamma")
    V.check_callable(bootstrap, "bootstrap", "bootstrap(state) -> scalar", optional=True)
    uses_next = bool(getattr(reward, "uses_next_state", False))

    def one(s0, g, eps):
        tr = hybrid_unroll(policy, params, step, reward, mode_logits, s0, horizon=horizon,
                           mode_noise=g, policy_noise=eps, done=done)
        disc = _hybrid_discounts(tr.alive, gamma).astype(tr.rewards.dtype)
        boot = None
        if bootstrap is not None:
            v = jnp.reshape(bootstrap(jax.tree_util.tree_map(lambda x: x[-1], tr.states)), ())
            boot = jnp.where(tr.alive[-1] > 0, v, jnp.zeros_like(v))
        lp = tr.log_probs if score_function else sg(tr.log_probs)
        return dpmb_sf_surrogate(tr.rewards, lp, disc, bootstrap=boot, reward_uses_next_state=uses_next)

    eps_axis = None if policy_noise is None else 1
    return jnp.mean(jax.vmap(one, in_axes=(0, 1, eps_axis))(states, mode_noise, policy_noise))


def exact_hybrid_return(
    policy, params, step, reward, mode_logits, state, *, horizon: int, num_modes: int, gamma=1.0,
    max_sequences: int = 1 << 16, done=None,
) -> jax.Array:
    """E_z[Σ_{t<T} γ^t r_t] exactly, by enumerating all num_modes^T mode sequences (deterministic policy).

        J = Σ_z exp(Σ_t log p(z_t | s_t, a_t)) · Σ_t γ^t alive_t r_t(z)

    With ``done``, the modes after the end of an episode do not change the return
    and their probabilities sum to one: each such tail is counted once (as z = 0
    there), which needs no mode probability past the terminal state.
    A reference for small T (``max_sequences`` guards the cost); differentiable
    (``jax.grad``) and cheap enough for float64 finite differences.
    """
    horizon = V.check_horizon(horizon)
    if not isinstance(num_modes, (int, np.integer)) or num_modes < 1:
        raise ValueError(f"num_modes must be a positive int, got {num_modes!r}")
    count = int(num_modes) ** horizon
    if count > max_sequences:
        raise ValueError(f"horizon: {num_modes}^{horizon} = {count} mode sequences exceed max_sequences={max_sequences}")
    seqs = jnp.asarray(np.array(list(itertools.product(range(num_modes), repeat=horizon)), dtype=np.int32))

    def one(z):
        tr = hybrid_unroll(policy, params, step, reward, mode_logits, state, horizon=horizon, modes=z, done=done)
        disc = jnp.asarray(gamma, dtype=tr.rewards.dtype) ** jnp.arange(horizon, dtype=tr.rewards.dtype)
        live = tr.alive[:-1] > 0
        counted = jnp.all(live | (z == 0))  # one representative tail after the end
        return jnp.sum(tr.log_probs), jnp.sum(disc * tr.rewards), counted

    logp, ret, counted = jax.vmap(one)(seqs)
    return jnp.sum(jnp.where(counted, jnp.exp(logp) * ret, jnp.zeros_like(ret)))
