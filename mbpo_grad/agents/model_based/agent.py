"""The model-based algorithm as an ``offpolicy.OffPolicyAlgo`` and its ``Agent``, with the
``actor_objective`` / ``actor_batch`` pair that every actor step of ``learn`` differentiates.

``learn(learner, buffer, hp, key)`` (after the shared loop's collection; losses in ``losses.py``):

    fit           observation statistics of the buffer; the ensemble on ``fit_size`` stored
                  transitions (``data.py``), warm-started
    one_update    ``updates_per_iteration`` times (``lax.scan``), each on its own key:
      actor_batch   s_0 from the buffer, ε, ξ, statistics, model, V', α, γ  (``ActorBatch``)
      actor_step    value_and_grad of −mean_b J_b / n (``actor_objective``), guarded, clipped, Adam
      critic_step   TD(λ) targets of the same rollouts and one-step real targets, ``critic_iterations``
                    Adam steps, then V' ← polyak(V', V, τ)

With ``svg="replay"`` the update is instead (``replay_batch``, ``replay_objective``, ``replay_critic_step``):

      actor_batch   M stored transitions with their behaviour log-densities, an elite slot each,
                    statistics, model, V', α, γ, c  (``ReplayBatch``)
      actor_step    value_and_grad of −mean_b ρ̄_b J_b (replayed one-step returns, inferred noise)
      critic_step   the same transitions' real one-step targets weighted by ρ̄, then Polyak
and ``act``'s actions are stored with log μ(a|s) (``OffPolicyAlgo.behaviour_log_prob``).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from mbpo_grad import critics as C
from mbpo_grad import guards
from mbpo_grad import normalizer as N
from mbpo_grad import replay
from mbpo_grad.agents import common
from mbpo_grad.agents import offpolicy as OP
from mbpo_grad.agents.common import Agent
from mbpo_grad.agents.model_based import data, losses
from mbpo_grad.agents.model_based.config import ModelBasedConfig, check_obs_fns, validate
from mbpo_grad.agents.model_based.losses import ActorBatch, ReplayBatch
from mbpo_grad.agents.model_based.networks import _model_for, _policy_for, normalised_policy, value_critic
from mbpo_grad.models.ensemble import GaussianEnsemble, ModelParams
from mbpo_grad.policies.base import Policy, sample_and_log_prob

PyTree = Any
TRANSITION_KEYS = replay.TRANSITION_FIELDS + ("discount",)


class MBLearner(NamedTuple):
    model: ModelParams
    policy: PyTree
    critic: PyTree
    critic_target: PyTree
    actor_opt: PyTree
    critic_opt: PyTree
    obs_stats: N.RunningStats


def actor_optimizer(config: ModelBasedConfig) -> optax.GradientTransformation:
    """The actor's optimiser: clip_by_global_norm → Adam (constant lr; both set from ``hp`` in
    ``init``) inside ``guards.skip_nonfinite``: the actor backpropagates through n model steps,
    and a non-finite gradient or one of norm above ``max_grad_norm_to_skip`` skips the update
    (no parameter or Adam-moment change), as in SHAC."""
    return guards.skip_nonfinite(common.make_optimizer(total_steps=1, schedule="constant"),
                                 max_grad_norm_to_skip=float(config.max_grad_norm_to_skip))


def learn_keys(key: jax.Array, updates: int):
    """``learn``'s key splits: (fit-set key, model-fit key, one key per update [updates])."""
    k_fit_idx, k_fit, k_upd = jax.random.split(key, 3)
    return k_fit_idx, k_fit, jax.random.split(k_upd, updates)


def update_keys(key: jax.Array):
    """One update's key splits: (start observations, policy noise ε, model noise ξ, real batch)."""
    return tuple(jax.random.split(key, 4))


def make_algo(config: ModelBasedConfig, env, policy: Optional[Policy] = None,
              model: Optional[GaussianEnsemble] = None, reward_fn: Optional[Callable] = None,
              done_fn: Optional[Callable] = None) -> OP.OffPolicyAlgo:
    """The model-based algorithm as an ``OffPolicyAlgo`` for ``offpolicy``'s collection loop."""
    policy = _policy_for(env, config, policy)
    model = _model_for(env, config, model)
    check_obs_fns(env, reward_fn, done_fn)
    critic = value_critic(config, env.obs_size)
    n, M, U = int(config.horizon), int(config.batch_size), int(config.updates_per_iteration)
    obs_dim = env.obs_size
    noise_shape = tuple(policy.noise_shape)
    stochastic = noise_shape != (0,)
    replay_mode = config.svg == "replay"
    terminal = getattr(env, "done", None) is not None   # svg="replay": the stored 1 − terminal cuts the bootstrap

    # Built once: learning rates and clip norm live in the optimiser states, set in ``init``.
    actor_opt = actor_optimizer(config)
    critic_opt = OP.adam()

    def norm(stats, obs):
        return losses.normalise(config.obs_norm, stats, obs)

    def init(key, hp):
        k_m, k_p, k_c = jax.random.split(key, 3)
        mp, pp, cp = model.init(k_m), policy.init(k_p), critic.init(k_c)
        a_opt = common.init_optimizer(actor_opt, pp, learning_rate=hp.actor_lr, max_grad_norm=hp.max_grad_norm)
        return MBLearner(mp, pp, cp, cp, a_opt, OP.adam_init(critic_opt, cp, hp.critic_lr), N.init(obs_dim))

    def explore_init(num_envs):
        return ()

    def explore_reset(carry, mask):
        return carry

    def act(l: MBLearner, obs, carry, key, hp):
        o = jax.vmap(lambda x: norm(l.obs_stats, x))(obs)
        if stochastic:
            eps = jax.random.normal(key, (obs.shape[0],) + noise_shape)
            return jax.vmap(policy.sample, in_axes=(None, 0, 0))(l.policy, o, eps), carry
        a = jax.vmap(lambda x: policy.sample(l.policy, x, None))(o)
        a = a + hp.explore_std * jax.random.normal(key, a.shape, a.dtype)
        return jnp.clip(a, -1.0, 1.0), carry

    policy_params, eval_act = normalised_policy(config, policy)

    def rollout_objective(pp, batch: ActorBatch, return_traj: bool = False):
        """J_b [M], the per-rollout objective each actor step ascends (loss −mean_b J_b / n):

            J_b = Σ_{t<n} γ^t (r_t − α log π(a_t|s_t)) + γ^n V'(s_n)

        through the learned model from the buffer observations ``batch.start_obs`` with the
        batch's noise (``losses.rollout_return``; α = 0 without ``entropy``, a model terminal
        state from ``done_fn`` ends the sum without bootstrap). Pure in ``pp``: differentiate it
        (``common.per_sample_grads`` for each rollout's own gradient). ``return_traj=True`` also
        returns the engine's ``Trajectory`` ([M, ...]). Any rollout count M works.
        """
        rets, traj = losses.rollout_return(policy, model, critic, pp, batch, horizon=n, obs_norm=config.obs_norm,
                                           reward_fn=reward_fn, done_fn=done_fn,
                                           remat=common.remat_mode(config.remat))
        return (rets, traj) if return_traj else rets

    def replay_objective(pp, batch: ReplayBatch, return_traj: bool = False):
        """ρ̄_b J_b [M] (``svg="replay"``), the per-transition objective each actor step ascends
        (loss −mean_b ρ̄_b J_b; horizon 1, no 1/n):

            J_b = r̂_b − α log π(â_b|s_b) + γ d_b V'(ŝ'_b),   ρ̄_b = min(π_w(a_b|s_b) / μ(a_b|s_b), c)

        on the batch's stored transitions replayed with inferred noise (``losses.replay_return``;
        ρ̄ stop-gradient, evaluated at ``pp``). Pure in ``pp`` (``common.per_sample_grads``).
        ``return_traj=True`` also returns (J [M], ρ̄ [M]).
        """
        J, w = losses.replay_return(policy, model, critic, pp, batch, obs_norm=config.obs_norm,
                                    reward_fn=reward_fn, terminal=terminal)
        return (w * J, (J, w)) if return_traj else w * J

    def rollout_batch(l: MBLearner, buf, hp, key) -> ActorBatch:
        """The ``ActorBatch`` of one update of ``learn`` on the learner ``l`` (its model, statistics and
        target critic) and an update key (``learn_keys(·)[2][i]``): ``update_keys`` splits it as the
        update does, which differentiates ``actor_objective`` on exactly this batch."""
        k_s, k_eps, k_xi, _ = update_keys(key)
        starts = replay.sample(buf, k_s, M)["obs"]
        eps = jax.random.normal(k_eps, (n + 1, M) + noise_shape) if stochastic else None
        xi = model.sample_noise(k_xi, (n, M)) if config.model_noise else None
        alpha = hp.alpha if config.entropy else None
        return ActorBatch(starts, eps, xi, l.obs_stats, l.model, l.critic_target, alpha, hp.gamma)

    def replay_batch(l: MBLearner, buf, hp, key) -> ReplayBatch:
        """The ``ReplayBatch`` of one update (``svg="replay"``): M stored transitions (with the
        behaviour log-densities) and an elite slot per transition, from ``update_keys``' start and
        model-noise keys; the learner's model, statistics, target critic; α, γ, ``replay_cap``."""
        k_s, _, k_xi, _ = update_keys(key)
        items = replay.sample(buf, k_s, M)
        tr = {k: items[k] for k in TRANSITION_KEYS}
        member = model.sample_noise(k_xi, (M,))["member"]
        alpha = hp.alpha if config.entropy else None
        return ReplayBatch(tr, items["behaviour_log_prob"], member, l.obs_stats, l.model, l.critic_target, alpha,
                           hp.gamma, hp.replay_cap)

    actor_objective = replay_objective if replay_mode else rollout_objective
    actor_batch = replay_batch if replay_mode else rollout_batch
    loss_horizon = 1 if replay_mode else n

    def actor_step(l: MBLearner, batch):
        """(policy, opt state, loss, grad norm, stop-gradient aux, objective [M]): the guarded step on
        ∇_w of −mean_b J_b / n (rollout; aux the trajectory) or −mean_b ρ̄_b J_b (replay; aux (J, ρ̄))."""
        def loss_fn(pp):
            obj, aux = actor_objective(pp, batch, return_traj=True)
            return losses.actor_loss(obj, loss_horizon), (aux, obj)

        (a_loss, (aux, obj)), g = jax.value_and_grad(loss_fn, has_aux=True)(l.policy)
        grad_norm = optax.global_norm(g)
        upd, a_opt = actor_opt.update(g, l.actor_opt, l.policy, value=a_loss)
        return optax.apply_updates(l.policy, upd), a_opt, a_loss, grad_norm, jax.lax.stop_gradient(aux), obj

    def real_targets(l: MBLearner, real, hp, key):
        """y = r − α log π(ã|s) + γ (1 − terminal) V'(s') on real transitions, ã ~ π(·|s) fresh from
        the pre-step policy ``l.policy`` (α = 0 without ``entropy``)."""
        stats = l.obs_stats
        lp, alpha = None, None
        if config.entropy:
            # The soft target's entropy part E_{a~π}[−α log π(a|s)] = α H(π(·|s)) does not involve the
            # stored action: one fresh a ~ π(·|s), its density forward from ε (exact where float32
            # tanh saturates; log π at the behaviour action was off-policy and used the inverse path).
            eps_real = jax.random.normal(jax.random.fold_in(key, 1), (M,) + noise_shape)
            _, lp = jax.vmap(lambda o, e: sample_and_log_prob(policy, l.policy, norm(stats, o), e))(
                real["obs"], eps_real)
            alpha = hp.alpha
        v_next = jax.vmap(lambda o: critic.apply(l.critic_target, norm(stats, o)))(real["next_obs"])
        return losses.real_targets(real["reward"], real["discount"], v_next, hp.gamma, lp, alpha)

    def fit_critic(l: MBLearner, c_loss_fn, hp):
        """(critic, opt state, target critic, last loss): ``critic_iterations`` Adam steps, then Polyak."""
        def c_step(carry, _):
            cp, co = carry
            loss, gc = jax.value_and_grad(c_loss_fn)(cp)
            u, co = critic_opt.update(gc, co, cp)
            return (optax.apply_updates(cp, u), co), loss

        (cp, c_opt), c_losses = jax.lax.scan(c_step, (l.critic, l.critic_opt), None,
                                             length=int(config.critic_iterations))
        return cp, c_opt, C.polyak(l.critic_target, cp, hp.tau), c_losses[-1]

    def critic_step(l: MBLearner, traj, buf, hp, key):
        """(critic, opt state, target critic, last loss, mean model target): ``critic_iterations``
        Adam steps on L_V, then Polyak. Real targets use the pre-step policy ``l.policy``."""
        stats = l.obs_stats

        def target_value(o):
            return critic.apply(l.critic_target, norm(stats, o))

        x_model, y_model, w_model = losses.model_targets(traj, target_value, done_fn, hp.gamma, hp.lam)
        real = replay.sample(buf, key, M)
        y_real = real_targets(l, real, hp, key)
        xn_model = jax.vmap(lambda o: norm(stats, o))(x_model)
        xn_real = jax.vmap(lambda o: norm(stats, o))(real["obs"])

        def c_loss_fn(cp):
            return losses.critic_loss(critic, cp, xn_model, y_model, w_model, xn_real, y_real, hp.real_ratio)

        return (*fit_critic(l, c_loss_fn, hp), jnp.mean(y_model))

    def replay_critic_step(l: MBLearner, batch: ReplayBatch, weights, hp, key):
        """(critic, opt state, target critic, last loss, mean target), ``svg="replay"``: the actor
        batch's transitions, their real targets weighted by the actor step's ρ̄ (pre-step policy)."""
        real = batch.transitions
        y_real = real_targets(l, real, hp, key)
        xn_real = jax.vmap(lambda o: norm(l.obs_stats, o))(real["obs"])

        def c_loss_fn(cp):
            return losses.replay_critic_loss(critic, cp, xn_real, y_real, weights)

        return (*fit_critic(l, c_loss_fn, hp), jnp.mean(y_real))

    def one_update(l: MBLearner, key, buf, hp):
        batch = actor_batch(l, buf, hp, key)
        pp, a_opt, a_loss, grad_norm, aux, obj = actor_step(l, batch)
        extra = {}
        if replay_mode:
            J, w = aux
            cp, c_opt, tp, c_loss, y_mean = replay_critic_step(l, batch, w, hp, update_keys(key)[3])
            model_return, extra = jnp.mean(J), {"replay_weight": jnp.mean(w)}
        else:
            cp, c_opt, tp, c_loss, y_mean = critic_step(l, aux, buf, hp, update_keys(key)[3])
            model_return = jnp.mean(obj)
        new = MBLearner(l.model, pp, cp, tp, a_opt, c_opt, l.obs_stats)
        return new, {"actor_loss": a_loss, "critic_loss": c_loss, "grad_norm": grad_norm,
                     "skipped_updates": guards.skip_stats(a_opt)["skipped_updates"],
                     "model_return": model_return, "critic_target": y_mean, **extra}

    def learn(l: MBLearner, buf, hp, key):
        k_fit_idx, k_fit, k_upd = learn_keys(key, U)
        stats = data.buffer_obs_stats(buf, obs_dim) if config.obs_norm else l.obs_stats
        mp, fm = model.fit(l.model, data.fit_data(buf, k_fit_idx, int(config.fit_size)), k_fit)
        l = l._replace(model=mp, obs_stats=stats)
        l, m = jax.lax.scan(lambda c, k: one_update(c, k, buf, hp), l, k_upd)
        m = jax.tree_util.tree_map(jnp.mean, m)
        m["model_mse"] = jnp.mean(fm["holdout_mse"][mp.elites])
        m["model_nll"] = fm["train_nll"][-1]
        return l, m

    behaviour_log_prob = None
    if replay_mode:
        def behaviour_log_prob(l: MBLearner, obs, actions, hp):
            """log μ(a|s) [B] of ``act``'s actions at the stored (float32) action: ``policy.log_prob`` on
            the normalised observation (the inverse route ``svg.replay_log_ratio`` requires)."""
            del hp
            o = jax.vmap(lambda x: norm(l.obs_stats, x))(obs)
            return jax.vmap(policy.log_prob, in_axes=(None, 0, 0))(l.policy, o, actions)

    name = "model_based" if policy.name == "gaussian" else f"model_based-{policy.name}"
    return OP.OffPolicyAlgo(init, explore_init, act, explore_reset, learn, name, policy_params, eval_act,
                            actor_objective=actor_objective, actor_batch=actor_batch,
                            behaviour_log_prob=behaviour_log_prob)


def make_agent(config: ModelBasedConfig, *, env=None, policy: Optional[Policy] = None,
               model: Optional[GaussianEnsemble] = None, reward_fn: Optional[Callable] = None,
               done_fn: Optional[Callable] = None) -> Agent:
    """The model-based ``Agent`` (init, update, evaluate, actor_objective, actor_batch).

    env: an ``envs.Env`` instead of ``config.env``. policy: any ``Policy`` bundle (default the
    tanh-Gaussian with ``actor_hidden``; deterministic ones explore with ``explore_std``).
    model: a ``gaussian_ensemble`` bundle (default built from the config). reward_fn(obs, action)
    -> r: a known reward of the observation for model rollouts (default: the model's learned
    reward). done_fn(obs) -> bool: termination inside model rollouts (default: none).
    ``actor_batch(state, hp, key)`` draws one update's batch from ``state``'s learner and buffer
    (``key`` an update key, see ``make_algo``'s ``actor_batch``).
    """
    env, episode_length = validate(config, env)
    algo = make_algo(config, env, policy, model, reward_fn, done_fn)
    return OP.make_agent(config, algo, env, episode_length)


__all__ = ["MBLearner", "actor_optimizer", "learn_keys", "update_keys", "make_algo", "make_agent"]
