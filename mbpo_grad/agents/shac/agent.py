"""The SHAC / BPO ``Agent`` bundle: ``init``, ``update`` (one iteration), ``evaluate``, and the
``actor_objective`` / ``actor_batch`` pair that ``update`` differentiates.

One ``update`` is four pure steps on the ``SHACState`` (losses in ``losses.py``):

    actor_step     per-env (or batch) value_and_grad of −J_b / n, guarded, clipped, Adam
    usable_envs    which envs' windows feed the critic, the normaliser and the statistics
    score_steps    estimator="score"/"auto" with score_epochs ≥ 1: PPO's clipped-surrogate epochs
                   on the window's samples, each step weighted 1 − α_eff (``config`` docstring)
    critic_step    TD(λ) targets, ``critic_iterations`` epochs of minibatch regression, Polyak
    bookkeeping    observation statistics, episode returns, resets of ended or unusable envs
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from mbpo_grad import critics as C
from mbpo_grad import guards, mixing, rollout
from mbpo_grad import normalizer as N
from mbpo_grad.agents import common
from mbpo_grad.agents.common import Agent, TimedState
from mbpo_grad.agents.ppo import losses as ppo_losses
from mbpo_grad.agents.shac import losses
from mbpo_grad.agents.shac.config import SCORE_ESTIMATORS, HParams, SHACConfig, validate
from mbpo_grad.agents.shac.losses import ActorBatch
from mbpo_grad.agents.shac.networks import default_policy, make_act, value_critic
from mbpo_grad.envs import base as envs_base
from mbpo_grad.policies.base import Policy, log_ratio, sample_and_log_prob

PyTree = Any


class SHACState(NamedTuple):
    policy_params: PyTree
    critic_params: PyTree
    target_params: PyTree
    actor_opt: PyTree
    critic_opt: PyTree
    obs_stats: N.RunningStats
    env_state: TimedState
    ep_return: jax.Array       # [B] undiscounted return of the running episode so far
    last_return: jax.Array     # [B] return of each env's last finished episode
    finished: jax.Array        # [B] bool: has finished an episode
    env_steps: jax.Array       # int: environment transitions taken (live steps only)
    iteration: jax.Array
    horizon: Optional[jax.Array] = None   # adaptive_horizon: the actor's window h (int), else None
    score_opt: Optional[PyTree] = None    # the PPO steps' optimiser (estimator="score"/"auto", score_epochs ≥ 1)


# Which parts of the state carry the env batch (leading axis) for data-parallel runs.
ENV_AXES = SHACState(policy_params=None, critic_params=None, target_params=None, actor_opt=None, critic_opt=None,
                     obs_stats=None, env_state=0, ep_return=0, last_return=0, finished=0, env_steps=None,
                     iteration=None)


def make_agent(config: SHACConfig, *, env=None, policy: Optional[Policy] = None) -> Agent:
    """The SHAC / BPO ``Agent`` (init, update, evaluate) for ``config``.

    env: an ``envs.Env`` to use instead of ``config.env`` (its episode length applies unless
    ``config.episode_length`` is set). policy: any ``Policy`` bundle (default: a deterministic
    tanh MLP with ``actor_hidden``); a stochastic one (``noise_shape != (0,)``) gets fresh
    ε ~ N(0, I) of shape [n+1, num_envs, *noise_shape] each iteration and acts with ε = None
    (its mode) in evaluation.
    """
    env, episode_length = validate(config, env)
    n, B = int(config.horizon), int(config.num_envs)
    policy = common.policy_for(env, policy, lambda: default_policy(config, env.obs_size, env.action_size))
    stochastic = tuple(policy.noise_shape) != (0,)
    estimator = config.estimator
    if estimator in SCORE_ESTIMATORS and not stochastic:
        raise ValueError(f"estimator={estimator!r} needs a stochastic policy with a density (noise_shape != (0,)), "
                         f"got policy {policy.name!r} with noise_shape {tuple(policy.noise_shape)}")
    dyn_noise = tuple(env.noise_shape) != ()
    if estimator == "dpmb_sf":
        mode_logits, mode_of = envs_base.hybrid_modes(env)
    critic = value_critic(config, env.obs_size)
    step, reward, done, terminal = common.timed_env(env, episode_length)
    uses_next = bool(getattr(reward, "uses_next_state", False))   # r_t reads s_{t+1} (a transition reward)
    n_mb = int(config.critic_minibatches)
    mb_size = (n * B) // n_mb
    critic_steps = int(config.critic_iterations) * n_mb
    fdtype = jnp.float64 if config.x64 else jnp.float32
    per_env = config.guard == "per_env"
    remat = common.remat_mode(config.remat)
    skip_norm = float(config.max_grad_norm_to_skip)
    phased = estimator in SCORE_ESTIMATORS and config.score_epochs > 0   # PPO steps for the score part
    s_mb = (n * B) // int(config.score_minibatches)

    # Built once: the learning rates and the clip norm are hyper-parameters in the optimiser
    # states (optax.inject_hyperparams), set from the run's hparams in ``init``.
    actor_opt = guards.skip_nonfinite(
        common.make_optimizer(total_steps=config.iterations, schedule=config.lr_schedule,
                              b1=config.adam_b1, b2=config.adam_b2),
        max_grad_norm_to_skip=skip_norm)
    # SHAC clips only the actor's gradient; the critic's lr follows the same schedule.
    # A non-finite critic gradient (it should not happen: bad envs are weighted out) is skipped.
    critic_opt = guards.skip_nonfinite(
        common.make_optimizer(total_steps=config.iterations * critic_steps, schedule=config.lr_schedule,
                              b1=config.adam_b1, b2=config.adam_b2))
    # The PPO steps' own Adam (PPO's defaults: constant lr, b = (0.9, 0.999)); skips non-finite steps.
    score_opt = guards.skip_nonfinite(common.make_optimizer(total_steps=1, schedule="constant"),
                                      max_grad_norm_to_skip=skip_norm)

    def observe(stats, ts):
        obs = env.observe(ts.env_state)
        return N.normalize(stats, obs) if config.obs_norm else obs

    def to_float(tree):
        return jax.tree_util.tree_map(
            lambda x: x.astype(fdtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree)

    def init(key, hp):
        k_pol, k_crit, k_env = jax.random.split(key, 3)
        pp = to_float(policy.init(k_pol))
        cp = to_float(critic.init(k_crit))
        ts = common.reset_timed(env, jax.random.split(k_env, B))
        if config.stagger and n < episode_length:
            ts = ts._replace(t=(jnp.arange(B) * episode_length // B).astype(jnp.int32))
        zeros = jnp.zeros((B,), fdtype)
        return SHACState(
            pp, cp, cp, common.init_optimizer(actor_opt, pp, learning_rate=hp.actor_lr, max_grad_norm=hp.max_grad_norm),
            common.init_optimizer(critic_opt, cp, learning_rate=hp.critic_lr), N.init(env.obs_size, fdtype), ts,
            zeros, zeros, jnp.zeros((B,), bool), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
            jnp.asarray(n, jnp.int32) if config.adaptive_horizon else None,
            common.init_optimizer(score_opt, pp, learning_rate=hp.score_lr, max_grad_norm=hp.score_max_grad_norm)
            if phased else None,
        )

    def env_window(pp, ts0, eps, xi, stats, target_params, gamma, cut):
        """One env's window (no batch axis): (J, its trajectory); see ``actor_objective``."""
        value = (lambda ts: critic.apply(target_params, observe(stats, ts))) if config.use_critic else None
        ret, traj = losses.window_return(
            lambda params, ts, e: policy.sample(params, observe(stats, ts), e), pp, step, reward, done, ts0,
            horizon=n, gamma=gamma, value=value, terminal=terminal, policy_noise=eps, dynamics_noise=xi,
            remat=remat, cut=cut)
        if estimator == "dpmb_sf":  # + the modes' score terms (zero in value): J's gradient becomes DPMB-SF's
            ret = ret + mode_scores(traj, ret, xi, stats, target_params, gamma, cut)
        return ret, traj

    def mode_scores(traj, ret, xi, stats, target_params, gamma, cut):
        """``losses.mode_score_term`` of one env's window: ℓ_t = log p(z_t | s_t, a_t) at the mode
        z_t its step took, through the window's states and actions (stop-gradient at dead steps)."""
        live = traj.alive[:n] > 0
        s_t = rollout.gate_gradient(live, jax.tree_util.tree_map(lambda x: x[:n], traj.states))
        a_t = rollout.gate_gradient(live, traj.actions[:n])
        xs = jax.tree_util.tree_map(jax.lax.stop_gradient, (s_t.env_state, a_t, xi))

        def log_p(ts, a, ts_sg, a_sg, x):
            z = mode_of(ts_sg, a_sg, x)
            return jax.nn.log_softmax(mode_logits(ts.env_state, a))[z]

        lp = jax.vmap(log_p)(s_t, a_t, *xs)
        base = jax.vmap(lambda ts: critic.apply(target_params, observe(stats, ts)))(s_t) if config.use_critic else None
        return losses.mode_score_term(lp, traj.rewards, traj.alive, ret, None if base is None else
                                      jax.lax.stop_gradient(base), gamma, reward_uses_next_state=uses_next, cut=cut)

    def actor_objective(pp, batch: ActorBatch, return_traj: bool = False):
        """J_b [B], the per-env window objective the actor step ascends (loss −mean_b J_b / n):

            J_b = Σ_{t<k_b} γ^t r_t + γ^{k_b} V'(s_{k_b}) · [the window did not end in a terminal state],

        k_b = n, or the step at which env b's episode ended inside the window (a time limit
        is a truncation: bootstrapped with V'; a terminal state is not); V' the target critic
        on observations normalised with ``batch.obs_stats`` (no V' term with
        ``use_critic=False``). Pure in ``pp``: differentiate it (``per_env_grads`` for each
        env's own gradient). ``return_traj=True`` also returns the engine's ``Trajectory``
        ([B, ...]). Any env count B works (``batch`` fixes it).
        """
        ax = batch.axes()
        rets, traj = jax.vmap(env_window, in_axes=(None, ax.env_state, ax.policy_noise, ax.dynamics_noise,
                                                   None, None, None, None))(
            pp, batch.env_state, batch.policy_noise, batch.dynamics_noise, batch.obs_stats, batch.target_params,
            batch.gamma, batch.cut)
        return (rets, traj) if return_traj else rets

    def actor_batch(state: SHACState, hp: HParams, key) -> ActorBatch:
        """The actor step's ``ActorBatch`` for ``state`` and an iteration key (``update``'s own key
        splits: ``update(state, hp, key)`` differentiates ``actor_objective`` on exactly this)."""
        k_eps, k_xi, _, _ = jax.random.split(key, 4)
        policy_noise = None
        if stochastic:
            policy_noise = jax.random.normal(k_eps, (n + 1, B) + tuple(policy.noise_shape), fdtype)
        dynamics_noise = jax.random.normal(k_xi, (n, B) + tuple(env.noise_shape), fdtype) if dyn_noise else None
        return ActorBatch(state.env_state, policy_noise, dynamics_noise, state.obs_stats, state.target_params,
                          hp.gamma, state.horizon)

    def env_loss(pp, one_env):  # one env's batch (env axis of size 1): −J_b / n and (traj, J_b)
        rets, traj = actor_objective(pp, one_env, return_traj=True)
        return losses.actor_loss(rets, n), (jax.tree_util.tree_map(lambda x: x[0], traj), rets[0])

    def per_env_pathwise(params, batch):
        """((−J_b / n [B], (traj, J [B])), ∇_θ(−J_b / n) with a leading axis B)."""
        return jax.vmap(jax.value_and_grad(env_loss, has_aux=True), in_axes=(None, batch.axes()))(
            params, batch.singletons())

    def score_log_prob(old, pp, obs, eps):
        """log π_pp(a|obs) (up to a constant in pp) at the sampled a = sample(old, obs, eps)."""
        if policy.log_ratio is not None:  # no inverse of the squash (policies.base)
            return policy.log_ratio(old, pp, obs, eps)
        return policy.log_prob(pp, obs, jax.lax.stop_gradient(policy.sample(old, obs, eps)))

    def per_env_score(params, batch, traj, rets):
        """[B]-leading ∇_θ of each env's ``losses.score_window_loss`` on its (fixed) window."""
        old = jax.lax.stop_gradient(params)
        traj, rets = jax.lax.stop_gradient((traj, rets))

        def one(pp, states, rewards, alive, eps, ret):
            obs = jax.vmap(lambda ts: observe(batch.obs_stats, ts))(jax.tree_util.tree_map(lambda x: x[:n], states))
            lp = jax.vmap(lambda o, e: score_log_prob(old, pp, o, e))(obs, eps[:n])
            base = jax.vmap(lambda o: critic.apply(batch.target_params, o))(obs) if config.use_critic else None
            return losses.score_window_loss(lp, rewards, alive, ret, base, batch.gamma, n, cut=batch.cut)

        return jax.vmap(jax.grad(one), in_axes=(None, 0, 0, 0, 1, 0))(
            params, traj.states, traj.rewards, traj.alive, batch.policy_noise, rets)

    def mixed_gradient(params, batch, hp):
        """The actor step's terms for ``estimator="score"/"auto"`` (see ``actor_gradient``).

        An env is kept when its return and its score-function gradient are finite and that
        gradient's norm is at most ``max_grad_norm_to_skip``; with "auto" its pathwise gradient
        falls back to the score-function one where it is zero, non-finite or exploding."""
        if estimator == "auto":
            (env_losses, (traj, rets)), g1 = per_env_pathwise(params, batch)
        else:  # forward only: the score-function estimate takes no derivative of the system
            rets, traj = actor_objective(params, batch, return_traj=True)
            env_losses = -rets / n                                                         # actor_loss per env
        g0 = per_env_score(params, batch, traj, rets)
        n0 = mixing.sample_norms(g0)
        keep = jnp.isfinite(rets) & jnp.isfinite(n0) & (n0 <= skip_norm)
        max_env_norm = jnp.max(n0)
        if estimator == "auto":
            n1 = mixing.sample_norms(g1)
            max_env_norm = jnp.max(n1)                                               # of the pathwise samples
            g1, bad = mixing.fallback(g1, g0, skip_norm, norms=n1)
            alpha, extra = mixing.alpha_order(g1, g0, keep, hp.auto_z)
            n_fallback = jnp.sum(bad & keep)
            extra["fallback_envs"] = n_fallback.astype(jnp.int32)
            # the weight the update really gives pathwise samples (fallen-back envs carry their g0)
            extra["alpha_effective"] = alpha * (1.0 - n_fallback / jnp.maximum(jnp.sum(keep), 1))
            if phased:  # the pathwise part alone, from the envs that did not fall back: its own step
                grads = mixing.masked_mean(g1, keep & ~bad)
            else:
                grads = mixing.mix(g1, g0, keep, alpha)
        else:
            extra = {}
            grads = mixing.masked_mean(g0, keep)
        masked = (B - jnp.sum(keep)).astype(jnp.int32)
        loss = guards.masked_mean(jnp.where(keep, env_losses, jnp.nan))[0]
        return loss, grads, jax.lax.stop_gradient(traj), rets, keep, masked, max_env_norm, masked == B, extra

    def actor_gradient(params, batch, hp):
        """(loss, grads, traj, rets, keep [B], masked, max_env_norm, all_masked, extra metrics)."""
        if estimator in SCORE_ESTIMATORS:
            return mixed_gradient(params, batch, hp)
        if per_env:
            (env_losses, (traj, rets)), env_grads = per_env_pathwise(params, batch)
            env_norms = jax.vmap(guards.safe_global_norm)(env_grads)                        # [B]
            # An exploding env counts like a non-finite one: its value is NaN for the mask.
            checked = jnp.where(env_norms <= skip_norm, rets, jnp.nan)
            keep = guards.finite_mask(env_grads) & jnp.isfinite(checked)
            grads, masked = guards.masked_grad_mean(env_grads, values=checked)
            max_env_norm = jnp.max(env_norms)                                                # NaN if any is NaN
            all_masked = masked == B
            loss = guards.masked_mean(jnp.where(keep, env_losses, jnp.nan))[0]
        else:
            def batch_loss(pp):
                rets, traj = actor_objective(pp, batch, return_traj=True)
                return losses.actor_loss(rets, n), (traj, rets)

            # A NaN return can come with a finite gradient (a fault in the last transition only
            # reaches the bootstrap value), so the loss is checked too (``value=``).
            (loss, (traj, rets)), grads = jax.value_and_grad(batch_loss, has_aux=True)(params)
            keep = jnp.isfinite(rets)
            masked = (B - jnp.sum(keep)).astype(jnp.int32)
            max_env_norm = guards.safe_global_norm(grads)
            all_masked = jnp.zeros((), bool)
        return loss, grads, jax.lax.stop_gradient(traj), rets, keep, masked, max_env_norm, all_masked, {}

    def actor_step(state, loss, grads, all_masked, weight=None):
        """(params, opt state, skip statistics): the guarded Adam step, its update multiplied by
        ``weight`` when given (α_eff for the phased "auto", 0 for the phased "score"). (During
        ``actor_warmup``, ``update`` puts the old actor back afterwards; the statistics are reported.)"""
        params = state.policy_params
        updates, a_opt = actor_opt.update(grads, state.actor_opt, params, skip=all_masked, value=loss)
        if weight is not None:
            updates = jax.tree_util.tree_map(lambda u: (weight * u).astype(u.dtype), updates)
        pp = optax.apply_updates(params, updates)
        return pp, a_opt, guards.skip_stats(a_opt)

    def usable_envs(traj, keep):
        """[B] bool: the env's window is usable (not masked; every state and reward finite).
        Unusable windows feed neither the critic nor the normaliser nor the episode statistics."""
        def finite_rows(tree):  # [B] over every floating leaf with leading axis B
            out = jnp.ones((B,), bool)
            for x in jax.tree_util.tree_leaves(tree):
                if jnp.issubdtype(x.dtype, jnp.inexact):
                    out = out & jnp.all(jnp.isfinite(x.reshape((B, -1))), axis=1)
            return out

        return keep & finite_rows(traj.states) & finite_rows(traj.rewards)

    def window_targets(state, hp, traj, rewards, ok, lam):
        """(obs [B, n+1, d] normalised (zeros for unusable envs), V'(o) [B, n+1], TD(λ) targets
        [B, n]) of the window; without a critic V' = 0 (the targets are discounted returns for λ = 1)."""
        stats = state.obs_stats
        obs = jax.vmap(jax.vmap(lambda s: observe(stats, s)))(traj.states)          # [B, n+1, d]
        obs = jnp.where(ok[:, None, None], obs, 0.0)
        if config.use_critic:
            v_targ = jax.vmap(jax.vmap(lambda o: critic.apply(state.target_params, o)))(obs)
        else:
            v_targ = jnp.zeros(obs.shape[:2], fdtype)
        term = jax.vmap(jax.vmap(terminal))(traj.states)
        return obs, v_targ, losses.critic_targets(rewards, v_targ, traj.alive, term, hp.gamma, lam)

    def score_steps(pp, s_opt, old, obs, eps, adv, weights, hp, factor, key):
        """(params, opt state, metrics): ``score_epochs`` × ``score_minibatches`` Adam steps from pp on
        PPO's clipped surrogate (``ppo.losses.clipped_surrogate``) of the window's B·n samples,
        ratios π_θ(a|o) / π_old(a|o) against the policy that sampled them (so the clip bounds the
        whole move from it, the pathwise step included), advantages normalised over the batch;
        each update multiplied by ``factor`` (1 − α_eff)."""
        o = obs.reshape((n * B, -1))
        e = eps.reshape((n * B,) + tuple(policy.noise_shape))
        w = weights.reshape((n * B,))
        a = ppo_losses.normalize_advantages(adv.reshape((n * B,)), w)
        act, logp_old = jax.vmap(lambda oo, ee: sample_and_log_prob(policy, old, oo, ee))(o, e)
        act, logp_old = jax.lax.stop_gradient((act, logp_old))

        def ratios(p, idx):  # log π_p(a|o) − log π_old(a|o) of the samples idx
            return jax.vmap(lambda *x: log_ratio(policy, old, p, *x))(o[idx], e[idx], act[idx], logp_old[idx])

        def minibatch(carry, idx):
            p, ostate = carry
            loss, g = jax.value_and_grad(
                lambda q: ppo_losses.clipped_surrogate(ratios(q, idx), a[idx], hp.score_clip, w[idx]))(p)
            upd, ostate = score_opt.update(g, ostate, p, value=loss)
            upd = jax.tree_util.tree_map(lambda u: (factor * u).astype(u.dtype), upd)
            return (optax.apply_updates(p, upd), ostate), loss

        def epoch(carry, k):
            perm = jax.random.permutation(k, n * B)[: config.score_minibatches * s_mb]
            return jax.lax.scan(minibatch, carry, perm.reshape((config.score_minibatches, s_mb)))

        (p, s_opt), _ = jax.lax.scan(epoch, (pp, s_opt), jax.random.split(key, config.score_epochs))
        lr_end = ratios(p, jnp.arange(n * B))
        return p, s_opt, {"score_kl": ppo_losses.approx_kl(lr_end, w),
                          "score_clip_frac": ppo_losses.clip_fraction(lr_end, hp.score_clip, w)}

    def critic_step(state, hp, obs, targets, live, key):
        """(critic params, target params, critic opt state, last-epoch loss, skipped minibatch steps)."""
        x = obs[:, :-1].reshape((n * B, -1))
        y = jnp.where(live > 0, targets, 0.0).reshape((n * B,))
        w = live.reshape((n * B,))

        def minibatch(carry, idx):
            params, ostate = carry
            loss, g = jax.value_and_grad(lambda p: losses.critic_loss(critic, p, x[idx], y[idx], w[idx]))(params)
            upd, ostate = critic_opt.update(g, ostate, params, value=loss)
            return (optax.apply_updates(params, upd), ostate), loss

        def epoch(carry, k):
            perm = jax.random.permutation(k, n * B)[: n_mb * mb_size].reshape((n_mb, mb_size))
            return jax.lax.scan(minibatch, carry, perm)

        (cp, c_opt), mb_losses = jax.lax.scan(epoch, (state.critic_params, state.critic_opt),
                                              jax.random.split(key, config.critic_iterations))
        critic_skipped = (c_opt.total_skipped - state.critic_opt.total_skipped).astype(jnp.int32)
        return cp, C.polyak(state.target_params, cp, hp.tau), c_opt, jnp.mean(mb_losses[-1]), critic_skipped

    def update(state: SHACState, hp: HParams, key):
        _, _, k_crit, k_reset = jax.random.split(key, 4)
        stats = state.obs_stats
        batch = actor_batch(state, hp, key)

        loss, grads, traj, rets, keep, masked, max_env_norm, all_masked, extra = actor_gradient(
            state.policy_params, batch, hp)
        weight = None
        if phased:  # the actor's own step carries the pathwise part only: α_eff ("auto"), nothing ("score")
            weight = extra["alpha_effective"] if estimator == "auto" else jnp.zeros((), fdtype)
        pp, a_opt, actor_stats = actor_step(state, loss, grads, all_masked, weight)

        ok = usable_envs(traj, keep)                                                      # [B]
        live = traj.alive[:, :-1] * ok.astype(fdtype)[:, None]  # [B, n]: live steps of usable envs
        rewards = jnp.where(ok[:, None], traj.rewards, 0.0)
        window_return = guards.masked_mean(jnp.where(ok, rets, jnp.nan))[0]
        if config.use_critic or phased:
            # without a critic the PPO steps' advantages are the window's discounted returns (λ = 1)
            lam = hp.lam if config.use_critic else jnp.ones_like(hp.lam)
            obs, v_targ, targets = window_targets(state, hp, traj, rewards, ok, lam)

        s_opt = state.score_opt
        if phased:  # PPO's epochs on the window for the score-function part, weighted 1 − α_eff
            factor = (1.0 - weight) * (~all_masked).astype(fdtype)
            eps = jnp.swapaxes(batch.policy_noise[:n], 0, 1)                              # [B, n, ...]
            pp, s_opt, score_metrics = score_steps(pp, state.score_opt, state.policy_params, obs[:, :-1], eps,
                                                   targets - v_targ[:, :-1], live, hp, factor,
                                                   jax.random.fold_in(k_crit, 1))
            extra = {**extra, **score_metrics}
        if config.actor_warmup > 0:  # critic-only iterations: the actor and its optimisers stay as they were
            warm = state.iteration < config.actor_warmup
            pp, a_opt, s_opt = jax.tree_util.tree_map(lambda new, old: jnp.where(warm, old, new), (pp, a_opt, s_opt),
                                                      (state.policy_params, state.actor_opt, state.score_opt))

        if config.use_critic:
            cp, tp, c_opt, c_loss, critic_skipped = critic_step(state, hp, obs, targets, live, k_crit)
        else:
            cp, tp, c_opt = state.critic_params, state.target_params, state.critic_opt
            c_loss, critic_skipped = jnp.zeros((), fdtype), jnp.zeros((), jnp.int32)

        # ---- bookkeeping: obs statistics, episode returns, resets
        new_stats = stats
        if config.obs_norm:
            raw = jax.vmap(jax.vmap(lambda s: env.observe(s.env_state)))(
                jax.tree_util.tree_map(lambda a: a[:, :-1], traj.states))
            raw = jnp.where(ok[:, None, None], raw, 0.0)
            new_stats = N.update(stats, raw, live)
        acc = state.ep_return + jnp.sum(rewards, axis=1)
        ended = traj.alive[:, -1] <= 0
        counted = ended & ok
        last_return = jnp.where(counted, acc, state.last_return)
        finished = state.finished | counted
        ep_return = jnp.where(ended | ~ok, 0.0, acc)            # a bad env's episode is abandoned
        s_n = jax.tree_util.tree_map(lambda a: a[:, -1], traj.states)
        env_state = common.reset_where(env, s_n, ended | ~ok, k_reset)
        env_steps = state.env_steps + jnp.sum(traj.alive[:, :-1]).astype(jnp.int32)
        n_fin = jnp.sum(finished)
        episode_return = jnp.where(n_fin > 0, jnp.sum(jnp.where(finished, last_return, 0.0)) / jnp.maximum(n_fin, 1),
                                   jnp.nan)
        new_horizon = state.horizon
        if config.adaptive_horizon:  # halve on an exploding (or non-finite) per-env pathwise gradient, else grow
            explode = ~(max_env_norm <= hp.horizon_norm_limit)
            new_horizon = jnp.where(explode, jnp.maximum(config.horizon_min, state.horizon // 2),
                                    jnp.minimum(n, state.horizon + 1)).astype(jnp.int32)
            extra = {**extra, "horizon": state.horizon}
        new_state = SHACState(pp, cp, tp, a_opt, c_opt, new_stats, env_state, ep_return, last_return, finished,
                              env_steps, state.iteration + 1, new_horizon, s_opt)
        metrics = common.stack_metrics({
            "env_steps": env_steps,
            "episode_return": episode_return,
            "window_return": window_return,
            "reward_per_step": jnp.sum(rewards) / jnp.maximum(jnp.sum(live), 1.0),
            "actor_loss": -window_return / n,
            "critic_loss": c_loss,
            "grad_norm": actor_stats["grad_norm"],
            "max_env_grad_norm": max_env_norm,
            "skipped_updates": actor_stats["skipped_updates"],
            "total_skipped": actor_stats["total_skipped"],
            "masked_envs": masked,
            "reset_envs": jnp.sum(~ok).astype(jnp.int32),
            "critic_skipped": critic_skipped,
            **extra,
        })
        return new_state, metrics

    act = make_act(config, policy)

    def policy_params(state: SHACState, hp: HParams):
        del hp
        return common.normalised_policy_params(state.policy_params, state.obs_stats)

    def evaluate(state: SHACState, hp: HParams, key):
        return common.evaluate_policy(env, act, policy_params(state, hp), key, num_envs=config.eval_envs,
                                      episode_length=episode_length, dtype=fdtype, remat=remat)

    name = "shac" if config.use_critic else ("bpo" if n == episode_length else "truncated-bpo")
    return Agent(init, update, evaluate, name, policy_params, act,
                 common.agent_spec(env, policy, episode_length, config.eval_envs),
                 actor_objective=actor_objective, actor_batch=actor_batch, env_axes=ENV_AXES)


__all__ = ["SHACState", "make_agent"]
