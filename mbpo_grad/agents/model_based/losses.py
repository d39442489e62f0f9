"""The model-based agent's losses as pure functions: the n-step model-rollout objective J_n with
its V' bootstrap and entropy term, the actor loss, the critic's targets and its regression loss.

For one rollout b from a real observation s_0 (drawn from the buffer), with the policy π_w, the
learned model f̂ (``models.gaussian_ensemble``), the target critic V' on normalised observations
and the fixed noise ε_t (policy) and ξ_t (model: elite index and aleatoric noise, or None for
the elites' mean):

    a_t = π_w(s_t, ε_t),   (s_{t+1}, r_t) = f̂(s_t, a_t, ξ_t),   r̃_t = r_t − α log π_w(a_t|s_t)
    J_b = Σ_{t<n} γ^t r̃_t + γ^n V'(s_n)                                          (rollout_return)

(α = 0 without ``entropy``; V'(s_n) is a soft state value, so s_n gets no entropy bonus of its
own; with ``done_fn`` rewards and the gradient path stop at a model terminal state and the
bootstrap is dropped.) The actor ascends the pathwise gradient ∇_w J_n, J_n = mean_b J_b
(SVG(n), Heess et al. 2015; through a learned model from real states as in MAAC, Clavera et
al. 2020, and MBPO's branched rollouts, Janner et al. 2019; ``docs/theory.md``):

    actor loss     L_π = −mean_b J_b / n                                             (actor_loss)
    model targets  y_t = r̃_t + γ [(1 − λ) V'(s_{t+1}) + λ y_{t+1}]   (TD(λ) on the rollouts; model_targets)
    real targets   y = r − α log π(ã|s) + γ (1 − terminal) V'(s'),   ã ~ π(·|s) fresh  (real_targets)
    critic loss    L_V = (1 − ρ) L_model + ρ L_real,   L = Σ w (V_φ(o) − y)² / Σ w    (critic_loss)

ρ = ``real_ratio``. ``ActorBatch`` is what the actor step differentiates on.

With ``svg="replay"`` (SVG(1)-ER, Heess et al. 2015; docs/theory.md §4) the actor works on stored
transitions (s_b, a_b, r_b, s'_b, d_b = 1 − terminal_b) instead of model rollouts. The noise
ε̂_b = π_w⁻¹(a_b; s_b), ξ̂_b = f̂⁻¹(s'_b, r_b; s_b, a_b) (elite slot m_b) is inferred and held fixed
(``svg.replay_noise``), so â_b = π_w(s_b, ε̂_b), (ŝ'_b, r̂_b) = f̂(s_b, â_b, ξ̂_b) equal the stored
(a_b, s'_b, r_b) in value while their derivatives in w are pathwise:

    J_b = r̂_b − α log π_w(â_b|s_b) + γ d_b V'(ŝ'_b)                                  (replay_return)
    ρ̄_b = min(π_w(a_b|s_b) / μ(a_b|s_b), c)   (stop-gradient; μ's log-density stored in the buffer)
    actor loss     L_π = −mean_b ρ̄_b J_b        (horizon 1: no 1/n)
    critic loss    L_V = Σ_b ρ̄_b (V_φ(o_b) − y_b)² / Σ_b ρ̄_b,   y_b the real target above (replay_critic_loss)
"""
from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from mbpo_grad import critics as C
from mbpo_grad import normalizer as N
from mbpo_grad.models.ensemble import GaussianEnsemble, ModelParams
from mbpo_grad.objectives import pathwise_returns
from mbpo_grad.policies.base import Policy, sample_and_log_prob
from mbpo_grad.svg import soft_rollout, svg_replay_returns

PyTree = Any


class ActorBatch(NamedTuple):
    """What one actor step differentiates on: ``Agent.actor_objective(policy_params, batch)``.

    start_obs: [M, obs_dim] the rollouts' start observations s_0, drawn from the replay buffer.
    policy_noise: [n+1, M, *policy.noise_shape] ε of a stochastic policy, or None.
    dynamics_noise: the model noise ξ with leading axes [n, M] (``model.sample_noise``: elite slot
      and aleatoric noise), or None (``model_noise=False``: the elites' mean).
    obs_stats: the observation normaliser's ``RunningStats`` (the policy's and critic's inputs).
    model: the ensemble's ``ModelParams`` the rollouts step through.
    target_params: the target critic V' (the bootstrap γ^n V'(s_n)).
    alpha: the entropy temperature α (traced), or None without ``entropy``.
    gamma: the discount γ (traced).

    ``Agent.actor_batch(state, hp, key)`` (``OffPolicyAlgo.actor_batch(learner, buffer, hp,
    key)``) builds it with the key splits of one actor-critic update of ``learn``, which
    differentiates ``actor_objective`` on exactly the batch it draws. Rollout b's inputs sit on
    axis ``axes()`` of each field; ``singletons()`` makes that axis M one-rollout batches.
    """

    start_obs: jax.Array
    policy_noise: Optional[jax.Array]
    dynamics_noise: Optional[PyTree]
    obs_stats: N.RunningStats
    model: ModelParams
    target_params: PyTree
    alpha: Optional[jax.Array]
    gamma: jax.Array

    def axes(self) -> "ActorBatch":
        """``vmap`` in_axes of the rollout axis per field (None: shared by every rollout)."""
        noise_ax = None if self.dynamics_noise is None else jax.tree_util.tree_map(lambda _: 1, self.dynamics_noise)
        return ActorBatch(0, None if self.policy_noise is None else 1, noise_ax, None, None, None, None, None)

    def singletons(self) -> "ActorBatch":
        """The batch with a size-1 rollout axis inserted after each rollout axis (per-rollout ``vmap``)."""
        grow = lambda tree, ax: None if tree is None else jax.tree_util.tree_map(
            lambda x: jnp.expand_dims(x, ax + 1), tree)
        return self._replace(start_obs=grow(self.start_obs, 0), policy_noise=grow(self.policy_noise, 1),
                             dynamics_noise=grow(self.dynamics_noise, 1))


def normalise(obs_norm: bool, stats: N.RunningStats, obs: jax.Array) -> jax.Array:
    """(o − μ) / σ with the buffer's statistics when ``obs_norm``, else o."""
    return N.normalize(stats, obs) if obs_norm else obs


def rollout_return(policy, model: GaussianEnsemble, critic, policy_params: PyTree, batch: ActorBatch, *,
                   horizon: int, obs_norm: bool, reward_fn: Optional[Callable] = None,
                   done_fn: Optional[Callable] = None, remat: Any = False) -> Tuple[jax.Array, Any]:
    """(J [M], Trajectory [M, ...]): J_b = Σ_{t<n} γ^t r̃_t + γ^n V'(s_n) through the model.

    ``policy`` the ``Policy`` bundle (on normalised observations), ``model`` the ensemble bundle
    stepped with ``batch.model`` (``model.as_step``; engine states ``ModelState(obs, reward)``),
    ``critic`` the V bundle read at ``batch.target_params``. The reward r_t is the model's learned
    one (``model.as_reward()``) or ``reward_fn(obs_t, a_t)``; ``done_fn(obs) -> bool`` ends a
    rollout inside the model (``pathwise_returns``' ``done``). With ``batch.alpha`` not None the
    rewards are soft, r_t − α log π(a_t|s_t) with the density forward from ε
    (``svg.soft_rollout``), and the bootstrap is the soft state value V'(s_n) with no bonus.
    The trajectory's rewards are the soft ones (the critic's TD(λ) targets read them).
    """
    stats = batch.obs_stats
    states0 = model.initial_state(batch.start_obs)
    step = model.as_step(batch.model)
    if reward_fn is None:
        base_reward = model.as_reward()
    else:
        def base_reward(state, action):
            return reward_fn(state.obs, action)

    model_done = None if done_fn is None else (lambda state: jnp.asarray(done_fn(state.obs), bool))

    def bootstrap(state, action):
        return critic.apply(batch.target_params, normalise(obs_norm, stats, state.obs))

    # soft V(s_n) bootstrap: no extra bonus at s_n (it already holds the future entropy)
    pi_s, step_s, soft_reward, boot_s = soft_rollout(
        policy, step, base_reward, bootstrap, batch.alpha, lambda s: normalise(obs_norm, stats, s.obs),
        bonus_on_bootstrap=False)
    return pathwise_returns(pi_s, policy_params, step_s, soft_reward, states0, horizon=horizon, gamma=batch.gamma,
                            bootstrap=boot_s, policy_noise=batch.policy_noise, dynamics_noise=batch.dynamics_noise,
                            done=model_done, remat=remat)


class ReplayBatch(NamedTuple):
    """What one actor step differentiates on with ``svg="replay"``: ``actor_objective(policy_params, batch)``.

    transitions: stored transitions {obs, action, reward, next_obs, discount}, leading axis [M]
      (``replay.TRANSITION_FIELDS`` and discount = 1 − terminal), raw observations.
    behaviour_log_prob: [M] log μ(a_b|s_b) of the behaviour policy at the stored action (the
      buffer's ``behaviour_log_prob``), or None (unit importance weights).
    member: [M] the elite slot (a float, as ``model.sample_noise`` draws it) whose noise ξ̂_b is inferred.
    obs_stats: the observation normaliser's ``RunningStats`` (the policy's and critic's inputs).
    model: the ensemble's ``ModelParams`` (the fitted model the transitions are replayed through).
    target_params: the target critic V' (the bootstrap γ d_b V'(ŝ'_b)).
    alpha: the entropy temperature α (traced), or None without ``entropy``.
    gamma: the discount γ (traced).
    cap: the truncation c of the importance weights (traced, ``replay_cap``).

    ``axes()`` / ``singletons()`` as ``ActorBatch``'s (sample b on axis 0 of the per-transition fields).
    """

    transitions: Dict[str, jax.Array]
    behaviour_log_prob: Optional[jax.Array]
    member: jax.Array
    obs_stats: N.RunningStats
    model: ModelParams
    target_params: PyTree
    alpha: Optional[jax.Array]
    gamma: jax.Array
    cap: jax.Array

    def axes(self) -> "ReplayBatch":
        """``vmap`` in_axes of the sample axis per field (None: shared by every sample)."""
        return ReplayBatch({k: 0 for k in self.transitions}, None if self.behaviour_log_prob is None else 0, 0,
                           None, None, None, None, None, None)

    def singletons(self) -> "ReplayBatch":
        """The batch with a size-1 sample axis inserted after the sample axis (per-sample ``vmap``)."""
        grow = lambda x: None if x is None else jnp.expand_dims(x, 1)
        return self._replace(transitions={k: grow(v) for k, v in self.transitions.items()},
                             behaviour_log_prob=grow(self.behaviour_log_prob), member=grow(self.member))


def observation_policy(policy: Policy, obs_norm: bool, stats: N.RunningStats) -> Policy:
    """The bundle on raw observations: each of its functions sees (o − μ) / σ (o without ``obs_norm``).

    The agent's policy acts on normalised observations, while ``svg.svg_replay_returns`` hands the
    bundle the model's raw observation (``model.observe``) and the stored s_b (noise inference,
    densities): wrapping the bundle makes π⁻¹, log π and π see exactly what ``act`` and the
    rollouts' ``observe`` feed the policy.
    """
    if not obs_norm:
        return policy
    nrm = lambda o: N.normalize(stats, o)
    sl, kl, lr = policy.sample_and_log_prob, policy.kl, policy.log_ratio
    return policy._replace(
        sample=lambda p, o, e: policy.sample(p, nrm(o), e),
        infer_noise=lambda p, o, a: policy.infer_noise(p, nrm(o), a),
        log_prob=lambda p, o, a: policy.log_prob(p, nrm(o), a),
        sample_and_log_prob=None if sl is None else (lambda p, o, e: sl(p, nrm(o), e)),
        kl=None if kl is None else (lambda p0, p1, o: kl(p0, p1, nrm(o))),
        log_ratio=None if lr is None else (lambda p0, p1, o, e: lr(p0, p1, nrm(o), e)))


def replay_return(policy: Policy, model: GaussianEnsemble, critic, policy_params: PyTree, batch: ReplayBatch, *,
                  obs_norm: bool, reward_fn: Optional[Callable] = None,
                  terminal: bool = True) -> Tuple[jax.Array, jax.Array]:
    """(J [M], ρ̄ [M]): J_b = r̂_b − α log π(â_b|s_b) + γ d_b V'(ŝ'_b) on replayed transitions.

    One call of ``svg.svg_replay_returns`` (noise inference, the one-step pathwise return, the
    truncated weights ρ̄_b = min(π_w(a_b|s_b) / μ(a_b|s_b), c) from ``batch.behaviour_log_prob``
    via the forward density at ε̂_b) with the agent's pieces: the policy on normalised
    observations (``observation_policy``), the critic ``V'((o − μ)/σ)`` as a Q that ignores its
    action (so the ε' at s' it is evaluated with does not enter: zeros are passed), and the
    model's learned reward or ``reward_fn(obs, action)``. Two corrections in the agent's terms:

    * entropy (``batch.alpha`` not None): the V critic is a soft state value, so the bonus is
      −α log π(â_b|s_b) at s_b only (forward from ε̂_b); the engine function is called without α,
      as its soft-Q form would add a second bonus at ŝ'_b.
    * terminals (``terminal=True``, an env that can end): the bootstrap is multiplied by the
      stored d_b, J = J⁰ + d (J¹ − J⁰) with J⁰ the return without critic (exact for d ∈ {0, 1};
      a second engine call, skipped when the env never terminates).
    """
    stats = batch.obs_stats
    tr = batch.transitions
    pol = observation_policy(policy, obs_norm, stats)
    if reward_fn is not None:
        model = model._replace(as_reward=lambda params=None: (lambda state, action: reward_fn(state.obs, action)))

    def value(obs, action):
        del action  # a V critic: the action at s' does not enter
        return critic.apply(batch.target_params, normalise(obs_norm, stats, obs))

    M = tr["obs"].shape[0]
    kw = dict(gamma=batch.gamma, behaviour_log_prob=batch.behaviour_log_prob, cap=batch.cap, member=batch.member,
              next_policy_noise=jnp.zeros((M,) + tuple(policy.noise_shape), tr["obs"].dtype))
    J, weights = svg_replay_returns(pol, policy_params, model, batch.model, tr, critic=value, **kw)
    if terminal:
        J0, _ = svg_replay_returns(pol, policy_params, model, batch.model, tr, critic=None, **kw)
        J = J0 + tr["discount"] * (J - J0)
    if batch.alpha is not None:
        eps = jax.lax.stop_gradient(jax.vmap(pol.infer_noise, in_axes=(None, 0, 0))(policy_params, tr["obs"],
                                                                                     tr["action"]))
        _, lp = jax.vmap(lambda o, e: sample_and_log_prob(pol, policy_params, o, e))(tr["obs"], eps)
        J = J - batch.alpha * lp
    return J, weights


def actor_loss(returns: jax.Array, horizon: int) -> jax.Array:
    """L_π = −mean_b J_b / n (the 1/n keeps the step size comparable across horizons)."""
    return -jnp.mean(returns) / horizon


def model_targets(traj, target_value: Callable[[jax.Array], jax.Array], done_fn: Optional[Callable], gamma: Any,
                  lam: Any) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """(x [M n, d], y [M n], w [M n]): TD(λ) targets of the (stop-gradient) model rollouts.

    ``traj`` [M, n+1, ...] from ``rollout_return`` (soft rewards), ``target_value(obs)`` = V'(o)
    on a raw observation; x the rollout observations s_0..s_{n−1}, y their TD(λ) targets
    (``critics.td_lambda_targets``, cut at ``done_fn``'s terminal states), w the engine's alive
    mask (0 after a model terminal state).
    """
    obs_roll = traj.states.obs                                                    # [M, n+1, d]
    M, n1, obs_dim = obs_roll.shape
    n = n1 - 1
    v_targ = jax.vmap(jax.vmap(target_value))(obs_roll)
    if done_fn is None:
        term = jnp.zeros(traj.alive.shape, bool)
    else:
        term = jax.vmap(jax.vmap(lambda o: jnp.asarray(done_fn(o), bool)))(obs_roll)
    y = jax.vmap(C.td_lambda_targets, in_axes=(0, 0, 0, 0, None, None))(
        traj.rewards, v_targ, traj.alive, term, gamma, lam)                           # [M, n]
    x = obs_roll[:, :-1].reshape((M * n, obs_dim))
    return x, y.reshape((M * n,)), traj.alive[:, :-1].reshape((M * n,))


def real_targets(reward: jax.Array, discount: jax.Array, next_value: jax.Array, gamma: Any,
                 log_prob: Optional[jax.Array] = None, alpha: Any = None) -> jax.Array:
    """y = r − α log π(ã|s) + γ (1 − terminal) V'(s') on real transitions ([M] each).

    ``discount`` = 1 − terminal (time limits are truncations: bootstrapped), ``next_value`` =
    V'(s'), ``log_prob`` = log π(ã|s) at a fresh ã ~ π(·|s) (None without ``entropy``): the soft
    target's entropy part needs no stored action. Off-policy: r + γ V'(s') uses the stored
    behaviour action without an importance weight (the bias is measured in the package docstring).
    """
    if log_prob is not None:
        reward = reward - alpha * log_prob
    return reward + gamma * discount * next_value


def critic_loss(critic, params: PyTree, model_obs: jax.Array, model_y: jax.Array, model_w: jax.Array,
                real_obs: jax.Array, real_y: jax.Array, real_ratio: Any) -> jax.Array:
    """L_V = (1 − ρ) L_model + ρ L_real on normalised observations (``critics.v_loss``: Σ w (V − y)² / Σ w)."""
    lm = C.v_loss(critic, params, model_obs, model_y, model_w)
    lr_ = C.v_loss(critic, params, real_obs, real_y)
    return (1.0 - real_ratio) * lm + real_ratio * lr_


def replay_critic_loss(critic, params: PyTree, real_obs: jax.Array, real_y: jax.Array,
                       weights: jax.Array) -> jax.Array:
    """L_V = Σ ρ̄ (V_φ(o) − y)² / Σ ρ̄ on normalised observations (``svg="replay"``: real targets only).

    With the untruncated ratio the self-normalised fixed point is E_μ[ρ y | s] / E_μ[ρ | s] =
    E_{a~π}[y | s], the on-policy target (the behaviour action inside y is reweighted to π).
    """
    return C.v_loss(critic, params, real_obs, real_y, weights)


__all__ = ["ActorBatch", "ReplayBatch", "normalise", "observation_policy", "rollout_return", "replay_return",
           "actor_loss", "model_targets", "real_targets", "critic_loss", "replay_critic_loss"]
