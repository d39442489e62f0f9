"""The pathwise objective J_n and the named members of its family (docs/theory.md §1).

    J_n(w) = mean_b [ Σ_{t<n} γ^t r(s_t, a_t) + γ^n Q(s_n, a_n) ]

``jax.grad`` of ``pathwise_objective`` w.r.t. the policy parameters is the
estimator. With the noise fixed the trajectory is deterministic in ``w``; with
noise sampled per call it is the reparameterised (SVG) Monte-Carlo estimate.

| name                 | horizon        | policy          | bootstrap        |
|----------------------|----------------|-----------------|------------------|
| NFQCA / DDPG actor   | 0              | deterministic   | Q(s0, π(s0))     |
| SVG(0)               | 0              | stochastic      | Q(s0, π(s0, ε0)) |
| DPMB-R-n (``nstep``) | n              | deterministic   | γ^n Q(s_n, a_n)  |
| SVG(n)               | n              | stochastic      | γ^n Q(s_n, a_n)  |
| BPO (``bpo``)        | episode length | deterministic   | none             |
| SVG(∞)               | episode length | stochastic      | none             |

Reference: the policy-parametrisation chapter (restated in ``docs/theory.md`` §1)
(pathwise / "backprop through the model" gradients); Heess et al. 2015 (SVG);
Xu et al. 2022 (SHAC) for the short-horizon actor-critic use.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from mbpo_grad import validation as V
from mbpo_grad.rollout import Trajectory, gate_gradient, unroll

PyTree = Any


def discounted_sum(rewards: jax.Array, gamma: Any) -> jax.Array:
    """Σ_t γ^t r_t along the last axis (γ may be a traced scalar)."""
    n = rewards.shape[-1]
    discounts = jnp.asarray(gamma, dtype=rewards.dtype) ** jnp.arange(n, dtype=rewards.dtype)
    return jnp.sum(rewards * discounts, axis=-1)


def trajectory_return(
    traj: Trajectory,
    *,
    gamma: Any = 1.0,
    bootstrap: Optional[Callable[[PyTree, jax.Array], jax.Array]] = None,
) -> jax.Array:
    """J for one trajectory: Σ_{t<n} γ^t r_t + alive_n γ^n Q(s_n, a_n)."""
    n = traj.rewards.shape[-1]
    ret = discounted_sum(traj.rewards, gamma)
    if bootstrap is not None:
        live = traj.alive[n] > 0
        # Ended episodes feed the critic stop-gradient inputs (the rollout's "double
        # where"): Q's cotangent is zero there, and zero times a NaN Jacobian is NaN.
        s_n = gate_gradient(live, jax.tree_util.tree_map(lambda x: x[n], traj.states))
        a_n = gate_gradient(live, jax.tree_util.tree_map(lambda x: x[n], traj.actions))
        q = jnp.asarray(bootstrap(s_n, a_n))
        if q.shape != ():
            raise ValueError(
                f"bootstrap: expected a scalar Q(state, action) per state (shape ()), got shape {q.shape}"
            )
        term = jnp.asarray(gamma, dtype=ret.dtype) ** n * q
        ret = ret + jnp.where(live, term, jnp.zeros_like(term))
    return ret


def _validate(policy, step, reward, states, horizon, gamma, bootstrap, policy_noise, dynamics_noise, done):
    horizon = V.check_horizon(horizon)
    V.check_callable(policy, "policy", "policy(params, state, eps) -> action")
    V.check_callable(step, "step", "step(state, action, xi) -> next_state")
    V.check_callable(reward, "reward", "reward(state, action) -> scalar")
    V.check_callable(bootstrap, "bootstrap", "bootstrap(state, action) -> scalar", optional=True)
    V.check_callable(done, "done", "done(state) -> bool", optional=True)
    V.check_unit_interval(gamma, "gamma")
    if jnp.ndim(gamma) != 0:
        raise ValueError(f"gamma must be a scalar (vmap over several), got shape {jnp.shape(gamma)}")
    batch = V.check_states(states, "states")
    V.check_noise(policy_noise, "policy_noise", horizon + 1, batch, "horizon+1")
    V.check_noise(dynamics_noise, "dynamics_noise", horizon, batch, "horizon")
    if horizon == 0 and bootstrap is None:
        raise ValueError("horizon=0 needs a bootstrap critic (the objective would be identically 0)")
    return horizon, batch


def batched_unroll(
    policy, params, step, reward, states, *, horizon, policy_noise=None, dynamics_noise=None, done=None, remat=False
) -> Trajectory:
    """``unroll`` vmapped over the batch axis of ``states`` and of the noise (axis 1)."""

    def one(s0, eps, xi):
        return unroll(
            policy, params, step, reward, s0, horizon=horizon,
            policy_noise=eps, dynamics_noise=xi, done=done, remat=remat,
        )

    eps_axis = None if policy_noise is None else 1
    xi_axis = None if dynamics_noise is None else 1
    return jax.vmap(one, in_axes=(0, eps_axis, xi_axis))(states, policy_noise, dynamics_noise)


def pathwise_returns(
    policy, params, step, reward, states, *, horizon, gamma=1.0, bootstrap=None,
    policy_noise=None, dynamics_noise=None, done=None, remat=False,
):
    """Per-trajectory J_n, shape [B], and the batched ``Trajectory`` (for critics, logging)."""
    horizon, _ = _validate(policy, step, reward, states, horizon, gamma, bootstrap, policy_noise, dynamics_noise, done)
    traj = batched_unroll(
        policy, params, step, reward, states, horizon=horizon,
        policy_noise=policy_noise, dynamics_noise=dynamics_noise, done=done, remat=remat,
    )
    returns = jax.vmap(lambda tr: trajectory_return(tr, gamma=gamma, bootstrap=bootstrap))(traj)
    return returns, traj


def pathwise_objective(
    policy: Callable[[PyTree, PyTree, Any], jax.Array],
    params: PyTree,
    step: Callable[[PyTree, jax.Array, Any], PyTree],
    reward: Callable[..., jax.Array],
    states: PyTree,
    *,
    horizon: int,
    gamma: Any = 1.0,
    bootstrap: Optional[Callable[[PyTree, jax.Array], jax.Array]] = None,
    policy_noise: Optional[PyTree] = None,
    dynamics_noise: Optional[PyTree] = None,
    done: Optional[Callable[[PyTree], jax.Array]] = None,
    remat: Any = False,
) -> jax.Array:
    """Batch mean of Σ_{t<n} γ^t r(s_t, a_t) + γ^n Q(s_n, a_n); ``jax.grad`` it for the estimator.

    Args:
      policy: ``policy(params, state, eps) -> action`` for one state.
      params: policy parameters (any pytree).
      step: ``step(state, action, xi) -> next_state`` for one state (simulator or model).
      reward: ``reward(state, action) -> scalar``, or ``mg.transition_reward(fn)`` with
        ``fn(state, action, next_state)`` when the simulator computes it in ``step``.
      states: start states with leading batch axis B (array or pytree).
      horizon: n >= 0 (static). 0 with a critic is the NFQCA/DDPG/SVG(0) actor objective.
      gamma: discount in [0, 1]; may be a traced array (vmappable, no recompile).
      bootstrap: ``Q(state, action) -> scalar`` for the truncated tail, or None (no terminal term).
      policy_noise: ε with leading axes [horizon+1, B], or None.
      dynamics_noise: ξ with leading axes [horizon, B], or None.
      done: ``done(state) -> bool``: rewards and the gradient path stop at episode end,
        and the bootstrap is dropped for ended episodes.
      remat: False, True or a ``jax.checkpoint`` policy (bounded memory for long horizons).

    Raises:
      ValueError / TypeError naming the argument for a negative or non-int horizon,
      gamma outside [0, 1], noise whose leading axes do not match [horizon(+1), B],
      non-floating states, or non-callables.
    """
    returns, _ = pathwise_returns(
        policy, params, step, reward, states, horizon=horizon, gamma=gamma, bootstrap=bootstrap,
        policy_noise=policy_noise, dynamics_noise=dynamics_noise, done=done, remat=remat,
    )
    return jnp.mean(returns)


def bpo(policy, params, step, reward, states, *, episode_length, gamma=1.0, **kw):
    """Backprop policy optimisation: the whole episode, no critic (docs/theory.md §1)."""
    return pathwise_objective(policy, params, step, reward, states, horizon=episode_length, gamma=gamma, **kw)


def nstep(policy, params, step, reward, states, *, horizon, bootstrap, gamma=1.0, **kw):
    """DPMB-R-n / SVG(n): n model-unrolled steps and a critic on the tail."""
    if bootstrap is None:
        raise ValueError("bootstrap: nstep needs a critic Q(state, action); use bpo for no critic")
    return pathwise_objective(policy, params, step, reward, states, horizon=horizon, gamma=gamma, bootstrap=bootstrap, **kw)


dpmb = nstep


def actor_q_objective(policy, params, critic, states, *, policy_noise=None):
    """n = 0: mean_b Q(s_b, π(s_b, ε_b)) — the NFQCA / DDPG / SVG(0) actor objective."""
    def no_step(s, a, xi):  # never called at horizon 0
        return s

    def no_reward(s, a):
        return jnp.zeros(())

    return pathwise_objective(policy, params, no_step, no_reward, states, horizon=0, bootstrap=critic, policy_noise=policy_noise)
