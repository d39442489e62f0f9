"""SHAC's losses as pure functions: the window return with its truncation bootstrap, the actor
loss, the critic's TD(λ) targets and its regression loss.

For one env, a window of n steps from s_0 with the policy π_θ and the target critic V':

    J = Σ_{t<k} γ^t r_t + γ^k V'(s_k) · [s_k is not a true terminal state]          (window_return)

k = n, or the step at which the episode ended inside the window. The engine
(``objectives.pathwise_returns``, ``done`` masks) stops rewards and the gradient path at the end
of an episode and adds γ^n V'(s_n) for a window that runs to n; a time limit reached inside the
window is a truncation, not a terminal state, and gets γ^k V'(s_k) at the cut
(``truncation_bootstrap``). Without a critic (``value=None``) J is the plain n-step return:
BPO when n is the episode length.

    actor loss     L_π = −mean_b J_b / n                                               (actor_loss)
    targets        y_t = r_t + γ [(1 − λ) V'(s_{t+1}) + λ y_{t+1}]  (TD(λ), cut at episode ends)
    critic loss    L_V = Σ w (V_φ(o_t) − y_t)² / Σ w                                   (critic_loss)

(Xu et al. 2022, "Accelerated policy learning with parallel differentiable simulation", eqs. 4–6;
``docs/theory.md`` §7.)

``ActorBatch`` is what the actor step differentiates on; ``per_env_grads`` is each env's own
gradient of J_b, the quantity the per-env guard averages and the diagnostics study.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from mbpo_grad import critics as C
from mbpo_grad import normalizer as N
from mbpo_grad.agents import common
from mbpo_grad.agents.common import TimedState
from mbpo_grad.objectives import pathwise_returns
from mbpo_grad.rollout import gate_gradient

PyTree = Any


class ActorBatch(NamedTuple):
    """What one actor step differentiates on: ``Agent.actor_objective(policy_params, batch)``.

    env_state: ``TimedState`` [B] — the envs' window start states s_0 (episode step ``t`` inside).
    policy_noise: [n+1, B, *policy.noise_shape] ε of a stochastic policy, or None.
    dynamics_noise: [n, B, *env.noise_shape] ξ of a noisy env, or None.
    obs_stats: the observation normaliser's ``RunningStats`` (held fixed in the window).
    target_params: the target critic V' (bootstrap at the window end and at truncations).
    gamma: the discount γ (a traced hyper-parameter).

    ``Agent.actor_batch(state, hp, key)`` builds it with ``update``'s own key splits. Env b's
    inputs sit on axis ``axes()`` of each field; ``singletons()`` makes that axis B one-env
    batches (``vmap`` over ``axes()`` of it hands one env's ``ActorBatch`` with B = 1).
    """

    env_state: TimedState
    policy_noise: Optional[jax.Array]
    dynamics_noise: Optional[jax.Array]
    obs_stats: N.RunningStats
    target_params: PyTree
    gamma: jax.Array
    cut: Optional[jax.Array] = None   # adaptive_horizon: the actor's window h ≤ n (int scalar), else None

    def axes(self) -> "ActorBatch":
        """``vmap`` in_axes of the env axis per field (None: shared by every env)."""
        return ActorBatch(0, None if self.policy_noise is None else 1, None if self.dynamics_noise is None else 1,
                          None, None, None, None)

    def singletons(self) -> "ActorBatch":
        """The batch with a size-1 env axis inserted after each env axis (for per-env ``vmap``)."""
        grow = lambda tree, ax: None if tree is None else jax.tree_util.tree_map(
            lambda x: jnp.expand_dims(x, ax + 1), tree)
        return self._replace(env_state=grow(self.env_state, 0), policy_noise=grow(self.policy_noise, 1),
                             dynamics_noise=grow(self.dynamics_noise, 1))


def truncation_bootstrap(traj, terminal: Callable[[Any], jax.Array], value: Callable[[Any], jax.Array],
                         gamma: Any, upto: Optional[jax.Array] = None) -> jax.Array:
    """Σ_{k=1..n} c_k γ^k V'(s_k), c_k = 1 where the episode was cut at s_k by its time limit
    (only k ≤ ``upto`` when given: the cuts inside a window shortened to ``upto`` steps).

    One env's ``Trajectory`` (time on axis 0): c_k = alive_{k−1} (1 − alive_k)(1 − terminal(s_k)).
    Only the cut state's V' is read: the others get stop-gradient inputs and are selected away
    (the engine's "double where", ``rollout.gate_gradient``), so a critic that is non-finite at a
    true terminal state cannot reach the gradient as 0 · NaN.
    """
    n = traj.alive.shape[0] - 1
    term = jax.vmap(terminal)(traj.states).astype(traj.alive.dtype)
    cut = traj.alive[:-1] * (1.0 - traj.alive[1:]) * (1.0 - term[1:])
    if upto is not None:
        cut = jnp.where(jnp.arange(1, n + 1) <= upto, cut, 0.0)
    cut_states = gate_gradient(cut > 0, jax.tree_util.tree_map(lambda x: x[1:], traj.states))
    v_cut = jax.vmap(value)(cut_states)
    disc = gamma ** jnp.arange(1, n + 1, dtype=v_cut.dtype)
    return jnp.sum(jnp.where(cut > 0, disc * v_cut, 0.0))


def window_return(pi, params: PyTree, step, reward, done, s0, *, horizon: int, gamma: Any,
                  value: Optional[Callable[[Any], jax.Array]] = None,
                  terminal: Optional[Callable[[Any], jax.Array]] = None,
                  policy_noise=None, dynamics_noise=None, remat: Any = False,
                  cut: Optional[jax.Array] = None) -> Tuple[jax.Array, Any]:
    """One env's window objective J (a scalar) and its ``Trajectory`` (time on axis 0).

    ``cut`` = h (an int scalar in [1, n], may be traced): the objective of the window's first h
    steps, J_h = Σ_{t<h} γ^t r_t + γ^h V'(s_h)·alive_h + the time-limit cuts at k ≤ h (the env
    still steps n: the trajectory is the whole window). Steps past h reach J through nothing.

    ``pi(params, s, ε)``, ``step``, ``reward``, ``done`` are the engine's per-state functions;
    ``value(s)`` = V'(s) bootstraps the window end and time-limit cuts inside it (``terminal(s)``
    tells a true terminal state from a truncation); ``value=None``: no bootstrap (BPO).
    ``policy_noise`` [n+1, *noise_shape] / ``dynamics_noise`` [n, *noise_shape] or None.
    """
    one = lambda tree, axis: None if tree is None else jax.tree_util.tree_map(
        lambda x: jnp.expand_dims(x, axis), tree)
    bootstrap = None if (value is None or cut is not None) else (lambda s, a: value(s))
    rets, traj = pathwise_returns(
        pi, params, step, reward, one(s0, 0), horizon=horizon, gamma=gamma, bootstrap=bootstrap,
        policy_noise=one(policy_noise, 1), dynamics_noise=one(dynamics_noise, 1), done=done, remat=remat,
    )
    ret, traj = rets[0], jax.tree_util.tree_map(lambda x: x[0], traj)
    if cut is not None:
        disc = gamma ** jnp.arange(horizon, dtype=traj.rewards.dtype)
        ret = jnp.sum(jnp.where(jnp.arange(horizon) < cut, disc * traj.rewards, 0.0))
        if value is not None:
            live = traj.alive[cut] > 0
            s_h = gate_gradient(live, jax.tree_util.tree_map(lambda x: x[cut], traj.states))
            ret = ret + jnp.where(live, gamma ** cut * value(s_h), 0.0)
    if value is not None:
        ret = ret + truncation_bootstrap(traj, terminal, value, gamma, upto=cut)
    return ret, traj


def actor_loss(returns: jax.Array, horizon: int) -> jax.Array:
    """L_π = −mean_b J_b / n (the 1/n keeps the step size comparable across windows)."""
    return -jnp.mean(returns) / horizon


def _score_factors(rewards: jax.Array, alive: jax.Array, ret: jax.Array, baseline: Optional[jax.Array], gamma: Any,
                   cut: Optional[jax.Array], drop_own_reward: bool = False) -> Tuple[jax.Array, jax.Array]:
    """(sg(C_t − γ^t b_t) masked to the live steps [n], live [n]) for the window's score terms:

        C_t − γ^t b_t = J − Σ_{k<t} γ^k r_k − γ^t b_t        (b_t = 0 without a baseline)

    and without a baseline ``drop_own_reward`` also removes γ^t r_t (the reward-to-go after t).
    Live: alive_t, and t < ``cut`` when given (J is then the window's first h steps)."""
    n = rewards.shape[0]
    disc = gamma ** jnp.arange(n, dtype=rewards.dtype)
    dr = disc * rewards
    factor = ret - (jnp.cumsum(dr) - dr)
    if baseline is not None:
        factor = factor - disc * baseline
    elif drop_own_reward:
        factor = factor - dr
    live = alive[:n] > 0
    if cut is not None:
        live = live & (jnp.arange(n) < cut)
    return jnp.where(live, jax.lax.stop_gradient(factor), 0.0), live


def score_window_loss(log_probs: jax.Array, rewards: jax.Array, alive: jax.Array, ret: jax.Array,
                      baseline: Optional[jax.Array], gamma: Any, horizon: int,
                      cut: Optional[jax.Array] = None) -> jax.Array:
    """One env's score-function surrogate for the window objective J (``estimator="score"/"auto"``):

        L_sf = −(1/n) Σ_{t<n} alive_t ℓ_t(θ) · sg(C_t − γ^t b_t),    C_t = J − Σ_{k<t} γ^k r_k,

    ℓ_t = log π_θ(a_t | o_t) with the sampled a_t and o_t held fixed, J the window return with
    its bootstraps (``window_return``), b_t = V'(o_t) (or 0). ∇L_sf is an unbiased estimate of
    −∇E[J] / n, like ∇ of ``actor_loss`` (the pathwise one): rewards before step t do not depend
    on a_t (reward-to-go), b_t depends on s_t only, and the time-limit bootstraps of J at
    s_k (k > t) follow a_t. Needs no derivative of the system (``docs/theory.md`` §2, §9).

    log_probs [n] (as functions of θ), rewards [n] (zero after the episode's end), alive [n+1],
    ret: J (a scalar, held fixed), baseline [n] or None; ``cut`` = h: J is the window's first
    h steps (``window_return(cut=h)``), so only steps t < h carry a score.
    """
    adv, live = _score_factors(rewards, alive, ret, baseline, gamma, cut)
    lp = jnp.where(live, log_probs, 0.0)
    return -jnp.sum(adv * lp) / horizon


def mode_score_term(mode_log_probs: jax.Array, rewards: jax.Array, alive: jax.Array, ret: jax.Array,
                    baseline: Optional[jax.Array], gamma: Any, *, reward_uses_next_state: bool,
                    cut: Optional[jax.Array] = None) -> jax.Array:
    """The DPMB-SF score terms of one env's window (``estimator="dpmb_sf"``); zero in value:

        S = Σ_{t<n} alive_t (ℓ_t − sg(ℓ_t)) · sg(C_t − γ^t b_t),
        C_t = J − Σ_{k<t} γ^k r_k − [r_t = r(s_t, a_t)] γ^t r_t,

    ℓ_t = log p(z_t | s_t, a_t), the probability of the sampled discrete mode as a function of θ
    through s_t and a_t (the total derivative: the states are the pathwise window's), J the
    window return with its bootstraps. C_t is every term of J that z_t can move: the rewards
    after step t and the bootstraps, plus r_t itself when the reward reads s_{t+1}
    (``reward_uses_next_state``). b_t = V'(o_t) − [r_t = r(s_t, a_t)] r_t (or 0 without a critic)
    depends on s_t and a_t only. ∇(J + S), with J differentiated at the sampled modes held
    fixed, is the unbiased DPMB-SF gradient of E[J] (``score_function.dpmb_sf_surrogate``,
    ``docs/theory.md`` §3); ∇J alone misses how θ moves the mode probabilities.

    mode_log_probs [n] (differentiable), rewards [n] (zero after the episode's end), alive [n+1],
    ret: J (held fixed), baseline [n] V'(o_t) or None; ``cut`` = h: only steps t < h (J_h).
    """
    # with a baseline, C_t − γ^t b_t = J − Σ_{k<t} γ^k r_k − γ^t V'(o_t) for either kind of reward
    factor, live = _score_factors(rewards, alive, ret, baseline, gamma, cut,
                                  drop_own_reward=not reward_uses_next_state)
    lp = jnp.where(live, mode_log_probs, 0.0)
    return jnp.sum(factor * (lp - jax.lax.stop_gradient(lp)))


def per_env_grads(actor_objective, policy_params: PyTree, batch: ActorBatch) -> Tuple[jax.Array, PyTree]:
    """(J [B], ∇_θ J_b with a leading axis B): each env's objective and its own gradient
    (``common.per_sample_grads``): the gradients ``update``'s per-env guard averages (it descends
    −J_b / n). Used by diagnostics (``experiments.compare_unroll_lengths``)."""
    return common.per_sample_grads(actor_objective, policy_params, batch)


def critic_targets(rewards: jax.Array, target_values: jax.Array, alive: jax.Array, terminal: jax.Array,
                   gamma: Any, lam: Any) -> jax.Array:
    """TD(λ) targets [B, n] for a batch of windows (``critics.td_lambda_targets`` per env).

    rewards [B, n] (stop-gradient), target_values V'(s_0..s_n) [B, n+1], alive and terminal [B, n+1].
    """
    return jax.vmap(C.td_lambda_targets, in_axes=(0, 0, 0, 0, None, None))(
        rewards, target_values, alive, terminal, gamma, lam)


def critic_loss(critic, params: PyTree, obs: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """L_V = Σ w (V_φ(o) − y)² / Σ w over a minibatch (``critics.v_loss``; w = 0 for dead steps)."""
    return C.v_loss(critic, params, obs, targets, weights)


__all__ = ["ActorBatch", "truncation_bootstrap", "window_return", "actor_loss", "score_window_loss", "mode_score_term",
           "per_env_grads",
           "critic_targets", "critic_loss"]
