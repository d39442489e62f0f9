"""A model-based actor-critic: SVG(n) through a learned ensemble, branching from real states.

The MBPO recipe (Janner et al. 2019, "When to trust your model") with the policy trained by
pathwise gradients through the learned model, as in MAAC (Clavera et al. 2020, "Model-augmented
actor-critic") and SVG(n) (Heess et al. 2015). One iteration (``offpolicy``'s shared loop):

1. collect — ``num_envs × steps_per_iteration`` real transitions (obs, a, r, obs', 1 − terminal)
   with the behaviour policy into the replay buffer: a stochastic policy acts with fresh
   ε ~ N(0, I); a deterministic one gets clipped Gaussian noise of std ``explore_std``. The first
   ``warmup_steps`` transitions use uniform random actions and no learning happens before.
2. fit — the probabilistic ensemble (``mg.models.gaussian_ensemble``) on ``fit_size`` distinct
   transitions drawn from the buffer (fixed size, so ``fit`` compiles once), ``model_epochs``
   passes, warm-started from the previous parameters.
3. ``updates_per_iteration`` actor-critic steps, each on ``batch_size`` start observations
   s_0 drawn from the buffer (branched rollouts: real states, model futures). With ε_t ~ N(0, I)
   and model noise ξ_t = ``model.sample_noise`` (a random elite per step and per rollout,
   Gaussian aleatoric noise; ``model_noise=False`` steps with the elites' mean)

       J_n(w) = mean_b [ Σ_{t<n} γ^t r̃_t + γ^n V'(s_n) ],        a_t = π(s_t, ε_t; w),
       (s_{t+1}, r_t) = f̂(s_t, a_t, ξ_t),   r̃_t = r_t − α log π(a_t|s_t)   (``entropy=True``),

   actor step: ascend ∇_w J_n (``mg.pathwise_returns``, the engine; global-norm clipping → Adam).
   Critic V (on observations): regress on TD(λ) targets of the same model rollouts
   (``critics.td_lambda_targets``, target critic V') and, with weight ``real_ratio``, on
   one-step targets of real transitions y = r + γ (1 − terminal) V'(s') − α log π(ã|s) with a fresh
   ã ~ π(·|s) (its density forward from ε: the entropy part of the soft V target needs no stored
   action). Then V' ← polyak(V', V, τ).

   Off-policy real targets: r + γ V'(s') uses the behaviour action a_b of the stored transition
   without an importance weight π/μ, so it regresses toward V^μ of the older policies (and of the
   uniform warm-up actions) rather than V^π. The buffer does not keep the behaviour densities
   (and a deterministic policy has none), so no weight is applied; instead the bias was measured
   on pendulum against on-policy targets E_{a~π}[r + γ V'(f(s, a))] from the true simulator
   (64 fresh actions per stored state, the agent's own V'): after 30 iterations (3000 real steps,
   eval return −118) mean(y_b − y_π) = −2.3 (1.3% of |y|; −5.5 on the warm-up data, −1.8 on policy
   data), against a critic error mean|V − y_π| = 3.4; through ``real_ratio`` = 0.1 that moves the
   critic's fixed point by about −0.23 (after 12 iterations: −0.94 → −0.09, critic error 9.9).
   Small at the default ``real_ratio``; it grows in proportion to it.
4. evaluate — the policy's mode (ε = None) on ``eval_envs`` real episodes.

Observations: the model, the policy and the critic all work on observation vectors
``env.observe(state)`` (pendulum: the state is [θ, θ̇], the observation [cos θ, sin θ, θ̇]), so
analytic and Brax envs go through the same code. The policy and critic see observations
standardised by the statistics of the whole buffer (``obs_norm``); the model has its own
standardisers.

Reward: learned by default — the ensemble predicts (Δobs, r) jointly and the model's engine
step carries r in ``ModelState.reward`` (``model.as_reward()``). Pass ``reward_fn(obs, action)``
to ``make_agent`` to use a known reward of the observation instead (MBPO's setting).
Termination: model rollouts never terminate unless ``done_fn(obs) -> bool`` is passed (the
model does not learn a termination classifier); real transitions keep the env's terminal flag
for the critic's real-data targets, and time limits are truncations (bootstrapped).

    cfg = ModelBasedConfig(env="pendulum", iterations=30)
    state, metrics = train(cfg, jax.random.key(0))
    metrics["eval_env_steps"], metrics["eval_return"]      # real steps vs return
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from mbpo_grad import critics as C
from mbpo_grad import guards
from mbpo_grad import normalizer as N
from mbpo_grad import replay
from mbpo_grad import validation as V
from mbpo_grad.agents import common
from mbpo_grad.agents import offpolicy as OP
from mbpo_grad.agents import hyperparams
from mbpo_grad.agents.hyperparams import traced
from mbpo_grad.agents.common import Agent
from mbpo_grad.models.ensemble import GaussianEnsemble, ModelParams, gaussian_ensemble
from mbpo_grad.objectives import pathwise_returns
from mbpo_grad.policies.base import Policy, sample_and_log_prob
from mbpo_grad.policies.gaussian import gaussian
from mbpo_grad.svg import soft_rollout

PyTree = Any


@hyperparams.derive
@dataclasses.dataclass(frozen=True)
class ModelBasedConfig(OP.OffPolicyConfig):
    """``OffPolicyConfig`` (collection, buffer, warm-up, evaluation) + model and SVG(n) settings.

    Real steps per iteration: ``num_envs × steps_per_iteration``. ``updates_per_iteration``:
    actor (and critic) steps in the model per iteration; ``batch_size``: rollouts per step (and
    real transitions per critic step). ``horizon``: n of SVG(n). Model: ``ensemble_size``
    members, ``elites`` used for rollouts, MLP ``model_hidden``, refitted every iteration for
    ``model_epochs`` epochs on ``fit_size`` buffer transitions (minibatch ``model_batch``,
    Adam ``model_lr``). ``model_noise``: sample ξ (random elite + Gaussian noise) in rollouts,
    else the elites' mean. ``critic_iterations``: critic Adam steps per update.
    ``entropy``: add −α log π to rewards and targets (needs a policy with ``log_prob``).
    ``max_grad_norm_to_skip``: an actor update whose gradient (through the n model steps) is
    non-finite or has a larger norm is skipped (``guards.skip_nonfinite``; metric ``skipped_updates``).
    """

    env: str = "pendulum"
    num_envs: int = 4
    iterations: int = 30
    steps_per_iteration: int = 25
    updates_per_iteration: int = 40
    batch_size: int = 256
    buffer_size: int = 20_000
    warmup_steps: int = 400
    eval_every: int = 2
    eval_envs: int = 16
    horizon: int = 10
    ensemble_size: int = 5
    elites: int = 3
    model_hidden: Tuple[int, ...] = (128, 128)
    model_epochs: int = 10
    fit_size: int = 2048
    model_batch: int = 256
    model_lr: float = 1e-3
    model_noise: bool = True
    critic_iterations: int = 2
    obs_norm: bool = True
    entropy: bool = False
    max_grad_norm_to_skip: float = 1e6
    # float hyper-parameters (defaults for HParams)
    actor_lr: float = traced(1e-3)
    critic_lr: float = traced(1e-3)
    gamma: float = traced(0.99)
    lam: float = traced(0.95)
    tau: float = traced(0.05)
    alpha: float = traced(0.0)
    real_ratio: float = traced(0.1)
    max_grad_norm: float = traced(1.0)
    explore_std: float = traced(0.3)


HParams = ModelBasedConfig.HPARAMS


class MBLearner(NamedTuple):
    model: ModelParams
    policy: PyTree
    critic: PyTree
    critic_target: PyTree
    actor_opt: PyTree
    critic_opt: PyTree
    obs_stats: N.RunningStats


# --------------------------------------------------------------------------- validation
def check_hparams(hp):
    OP.check_hparams(hp, unit=("gamma", "lam", "tau", "real_ratio"), positive=("actor_lr", "critic_lr"),
                     nonneg=("alpha", "explore_std"), finite=("max_grad_norm",))


def validate(config: ModelBasedConfig, env=None):
    """Check the static config; returns (env, episode_length). Errors name the field."""
    env, episode_length = OP.validate(config, ModelBasedConfig, env)
    OP.pos_int(config.horizon, "horizon")
    for name in ("ensemble_size", "elites", "model_epochs", "model_batch", "critic_iterations"):
        OP.pos_int(getattr(config, name), name)
    OP.pos_int(config.fit_size, "fit_size", minimum=2)
    if config.elites > config.ensemble_size:
        raise ValueError(f"elites ({config.elites}) must be <= ensemble_size ({config.ensemble_size})")
    if config.fit_size > config.buffer_size:
        raise ValueError(f"fit_size ({config.fit_size}) must be <= buffer_size ({config.buffer_size})")
    OP.check_hidden(config.model_hidden, "model_hidden")
    thr = config.max_grad_norm_to_skip
    if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not thr > 0:
        raise ValueError(f"max_grad_norm_to_skip must be a float > 0, got {thr!r}")
    if not (isinstance(config.model_lr, (int, float)) and config.model_lr > 0):
        raise ValueError(f"model_lr must be a float > 0, got {config.model_lr!r}")
    check_hparams(config)
    return env, episode_length


def _policy_for(env, config, policy):
    policy = common.policy_for(env, policy, lambda: gaussian(env.obs_size, env.action_size, config.actor_hidden))
    if config.entropy and tuple(policy.noise_shape) == (0,):
        raise ValueError("policy: entropy=True needs a stochastic policy with a density (gaussian, flow)")
    if config.entropy:  # log π enters the rewards and targets: trace its shapes too
        V.check_policy(policy, env.obs_size, env.action_size, density=True)
    return policy


def _model_for(env, config, model):
    if model is None:
        model = gaussian_ensemble(env.obs_size, env.action_size, config.ensemble_size, config.elites,
                                  hidden=config.model_hidden, learning_rate=config.model_lr,
                                  batch_size=config.model_batch, epochs=config.model_epochs)
    if not isinstance(model, GaussianEnsemble):
        raise TypeError(f"model must be a mg.models.GaussianEnsemble bundle, got {type(model).__name__}")
    if model.obs_dim != env.obs_size or model.act_dim != env.action_size:
        raise ValueError(f"model: obs_dim/act_dim ({model.obs_dim}, {model.act_dim}) do not match the env "
                         f"({env.obs_size}, {env.action_size})")
    return model


# --------------------------------------------------------------------------- pure pieces
def fit_indices(buffer: replay.ReplayBuffer, key: jax.Array, n: int) -> jax.Array:
    """n slot indices of stored items, distinct while the buffer holds >= n items (then cycling).

    A uniformly random ordering of the stored slots (stored slots get U(0, 1) keys, empty ones 2,
    argsort); index i takes ordered slot i mod size. Fixed output shape [n] for a fixed-size ``fit``.
    """
    u = jax.random.uniform(key, (buffer.capacity,))
    order = jnp.argsort(jnp.where(replay.valid_mask(buffer), u, 2.0))
    return order[jnp.arange(n) % jnp.maximum(buffer.size, 1)].astype(jnp.int32)


def buffer_obs_stats(buffer: replay.ReplayBuffer, obs_dim: int) -> N.RunningStats:
    """Exact mean / variance of the stored observations (empty slots weighted 0)."""
    return N.update(N.init(obs_dim), buffer.data["obs"], replay.valid_mask(buffer).astype(jnp.float32))


def _check_obs_fns(env, reward_fn, done_fn):
    """Trace ``reward_fn(obs, action)`` and ``done_fn(obs)`` once: both must return shape ()."""
    obs = jax.ShapeDtypeStruct((env.obs_size,), jnp.result_type(float))
    act = jax.ShapeDtypeStruct((env.action_size,), jnp.result_type(float))
    for name, fn, args, sig in (("reward_fn", reward_fn, (obs, act), "reward_fn(obs, action)"),
                                ("done_fn", done_fn, (obs,), "done_fn(obs)")):
        if fn is None:
            continue
        out = V.trace_call(name, fn, *args)
        if not hasattr(out, "shape") or tuple(out.shape) != ():
            got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
            raise ValueError(f"{name}: {sig} with obs ({env.obs_size},) and action ({env.action_size},) must "
                             f"return a scalar (shape ()), got {got}")


# --------------------------------------------------------------------------- the algorithm
def normalised_policy(config: ModelBasedConfig, policy: Policy):
    """(policy_params, eval_act): the policy's mode (ε = None) on the normalised observation."""
    def policy_params(l: MBLearner, hp):
        del hp
        return common.normalised_policy_params(l.policy, l.obs_stats)

    return policy_params, common.normalised_act(policy, config.obs_norm)


def make_algo(config: ModelBasedConfig, env, policy: Optional[Policy] = None,
              model: Optional[GaussianEnsemble] = None, reward_fn: Optional[Callable] = None,
              done_fn: Optional[Callable] = None) -> OP.OffPolicyAlgo:
    """The model-based algorithm as an ``OffPolicyAlgo`` for ``offpolicy``'s collection loop."""
    policy = _policy_for(env, config, policy)
    model = _model_for(env, config, model)
    if reward_fn is not None and not callable(reward_fn):
        raise TypeError(f"reward_fn must be callable reward_fn(obs, action) -> r, got {type(reward_fn).__name__}")
    if done_fn is not None and not callable(done_fn):
        raise TypeError(f"done_fn must be callable done_fn(obs) -> bool, got {type(done_fn).__name__}")
    _check_obs_fns(env, reward_fn, done_fn)
    critic = C.v_critic(env.obs_size, config.critic_hidden)
    n, M, U = int(config.horizon), int(config.batch_size), int(config.updates_per_iteration)
    obs_dim = env.obs_size
    noise_shape = tuple(policy.noise_shape)
    stochastic = noise_shape != (0,)

    # Built once: learning rates and clip norm live in the optimiser states, set in ``init``.
    # The actor backpropagates through n model steps: a non-finite or exploding gradient skips the
    # update (no parameter or Adam-moment change), as in SHAC (guards.skip_nonfinite).
    actor_opt = guards.skip_nonfinite(common.make_optimizer(total_steps=1, schedule="constant"),
                                      max_grad_norm_to_skip=float(config.max_grad_norm_to_skip))
    critic_opt = OP.adam()

    def norm(stats, obs):
        return N.normalize(stats, obs) if config.obs_norm else obs

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

    # engine pieces on ModelState (obs, reward)
    if reward_fn is None:
        base_reward = model.as_reward()
    else:
        def base_reward(state, action):
            return reward_fn(state.obs, action)

    model_done = None if done_fn is None else (lambda state: jnp.asarray(done_fn(state.obs), bool))

    def one_update(l: MBLearner, key, buf, hp):
        k_s, k_eps, k_xi, k_real = jax.random.split(key, 4)
        stats = l.obs_stats
        starts = replay.sample(buf, k_s, M)["obs"]
        states0 = model.initial_state(starts)
        step = model.as_step(l.model)
        eps = jax.random.normal(k_eps, (n + 1, M) + noise_shape) if stochastic else None
        xi = model.sample_noise(k_xi, (n, M)) if config.model_noise else None

        def value(params, obs):
            return critic.apply(params, norm(stats, obs))

        def bootstrap(state, action):
            return value(l.critic_target, state.obs)

        def actor_loss(pp):
            alpha = hp.alpha if config.entropy else None
            # soft V(s_n) bootstrap: no extra bonus at s_n (it already holds the future entropy)
            pi_s, step_s, soft_reward, boot_s = soft_rollout(
                policy, step, base_reward, bootstrap, alpha, lambda s: norm(stats, s.obs),
                bonus_on_bootstrap=False)
            rets, traj = pathwise_returns(pi_s, pp, step_s, soft_reward, states0, horizon=n, gamma=hp.gamma,
                                          bootstrap=boot_s, policy_noise=eps, dynamics_noise=xi,
                                          done=model_done)
            return -jnp.mean(rets) / n, (traj, rets)

        (a_loss, (traj, rets)), g = jax.value_and_grad(actor_loss, has_aux=True)(l.policy)
        grad_norm = optax.global_norm(g)
        upd, a_opt = actor_opt.update(g, l.actor_opt, l.policy, value=a_loss)
        pp = optax.apply_updates(l.policy, upd)
        traj = jax.lax.stop_gradient(traj)

        # critic targets: TD(λ) on the model rollouts (their soft rewards), one-step on real data
        obs_roll = traj.states.obs                                                    # [M, n+1, d]
        v_targ = jax.vmap(jax.vmap(lambda o: value(l.critic_target, o)))(obs_roll)
        if done_fn is None:
            term = jnp.zeros(traj.alive.shape, bool)
        else:
            term = jax.vmap(jax.vmap(lambda o: jnp.asarray(done_fn(o), bool)))(obs_roll)
        y_model = jax.vmap(C.td_lambda_targets, in_axes=(0, 0, 0, 0, None, None))(
            traj.rewards, v_targ, traj.alive, term, hp.gamma, hp.lam)                   # [M, n]
        x_model = obs_roll[:, :-1].reshape((M * n, obs_dim))
        y_model = y_model.reshape((M * n,))
        w_model = traj.alive[:, :-1].reshape((M * n,))
        real = replay.sample(buf, k_real, M)
        r_real = real["reward"]
        if config.entropy:
            # The soft target's entropy part E_{a~π}[−α log π(a|s)] = α H(π(·|s)) does not involve the
            # stored action: one fresh a ~ π(·|s), its density forward from ε (exact where float32
            # tanh saturates; log π at the behaviour action was off-policy and used the inverse path).
            eps_real = jax.random.normal(jax.random.fold_in(k_real, 1), (M,) + noise_shape)
            _, lp = jax.vmap(lambda o, e: sample_and_log_prob(policy, l.policy, norm(stats, o), e))(
                real["obs"], eps_real)
            r_real = r_real - hp.alpha * lp
        v_next = jax.vmap(lambda o: value(l.critic_target, o))(real["next_obs"])
        y_real = r_real + hp.gamma * real["discount"] * v_next
        xn_model = jax.vmap(lambda o: norm(stats, o))(x_model)
        xn_real = jax.vmap(lambda o: norm(stats, o))(real["obs"])
        opt = critic_opt

        def c_loss_fn(cp):
            lm = C.v_loss(critic, cp, xn_model, y_model, w_model)
            lr_ = C.v_loss(critic, cp, xn_real, y_real)
            return (1.0 - hp.real_ratio) * lm + hp.real_ratio * lr_

        def c_step(carry, _):
            cp, co = carry
            loss, gc = jax.value_and_grad(c_loss_fn)(cp)
            u, co = opt.update(gc, co, cp)
            return (optax.apply_updates(cp, u), co), loss

        (cp, c_opt), c_losses = jax.lax.scan(c_step, (l.critic, l.critic_opt), None,
                                             length=int(config.critic_iterations))
        tp = C.polyak(l.critic_target, cp, hp.tau)
        new = MBLearner(l.model, pp, cp, tp, a_opt, c_opt, stats)
        return new, {"actor_loss": a_loss, "critic_loss": c_losses[-1], "grad_norm": grad_norm,
                     "skipped_updates": guards.skip_stats(a_opt)["skipped_updates"],
                     "model_return": jnp.mean(rets), "critic_target": jnp.mean(y_model)}

    def learn(l: MBLearner, buf, hp, key):
        k_fit_idx, k_fit, k_upd = jax.random.split(key, 3)
        stats = buffer_obs_stats(buf, obs_dim) if config.obs_norm else l.obs_stats
        idx = fit_indices(buf, k_fit_idx, int(config.fit_size))
        d = jax.tree_util.tree_map(lambda x: x[idx], buf.data)
        data = {"s": d["obs"], "a": d["action"], "r": d["reward"], "s_next": d["next_obs"]}
        mp, fm = model.fit(l.model, data, k_fit)
        l = l._replace(model=mp, obs_stats=stats)
        l, m = jax.lax.scan(lambda c, k: one_update(c, k, buf, hp), l, jax.random.split(k_upd, U))
        m = jax.tree_util.tree_map(jnp.mean, m)
        m["model_mse"] = jnp.mean(fm["holdout_mse"][mp.elites])
        m["model_nll"] = fm["train_nll"][-1]
        return l, m

    name = "model_based" if policy.name == "gaussian" else f"model_based-{policy.name}"
    return OP.OffPolicyAlgo(init, explore_init, act, explore_reset, learn, name, policy_params, eval_act)


def make_agent(config: ModelBasedConfig, *, env=None, policy: Optional[Policy] = None,
               model: Optional[GaussianEnsemble] = None, reward_fn: Optional[Callable] = None,
               done_fn: Optional[Callable] = None) -> Agent:
    """The model-based ``Agent`` (init, update, evaluate).

    env: an ``envs.Env`` instead of ``config.env``. policy: any ``Policy`` bundle (default the
    tanh-Gaussian with ``actor_hidden``; deterministic ones explore with ``explore_std``).
    model: a ``gaussian_ensemble`` bundle (default built from the config). reward_fn(obs, action)
    -> r: a known reward of the observation for model rollouts (default: the model's learned
    reward). done_fn(obs) -> bool: termination inside model rollouts (default: none).
    """
    env, episode_length = validate(config, env)
    algo = make_algo(config, env, policy, model, reward_fn, done_fn)
    return OP.make_agent(config, algo, env, episode_length)


def make_train_fn(config: ModelBasedConfig, **kw):
    """A pure ``train_fn(key, hparams) -> (state, metrics, eval_returns)`` for jit / vmap / sweeps."""
    return common.make_train_fn(make_agent(config, **kw), config.iterations, config.eval_every)


def run(config: ModelBasedConfig, key: jax.Array, **kw):
    """(final ``OffPolicyState``, metrics); keywords as ``train``."""
    return OP.run_agent(make_agent, check_hparams, config, key, **_split_kw(kw))


def train(config: ModelBasedConfig, key: jax.Array, **kw):
    """Train the model-based agent: ``(make_policy, params, metrics)``.

    metrics: per-iteration arrays (``env_steps`` — real transitions so far —, ``episode_return``,
    ``actor_loss``, ``critic_loss``, ``grad_norm``, ``model_return``, ``model_mse`` — holdout MSE
    of the elites, raw units —, ``model_nll``; zeros before learning starts) and the evaluations
    ``eval_iteration``, ``eval_env_steps``, ``eval_return``, plus ``wall_s``. Keywords:
    ``hparams``, ``env``, ``policy``, ``model``, ``reward_fn``, ``done_fn`` (to ``make_agent``)
    and ``driver.run``'s (``progress``, ``progress_fn``, checkpoints, ``run_dir``, ...).
    """
    return OP.train(make_agent, check_hparams, config, key, **_split_kw(kw))


_AGENT_KW = ("model", "reward_fn", "done_fn")


def _split_kw(kw):
    agent_kw = {k: kw.pop(k) for k in _AGENT_KW if k in kw}
    return {**kw, "agent_kw": agent_kw}


def make_act_for(config: ModelBasedConfig, spec, policy: Optional[Policy] = None):
    """``act(params, obs)`` of a saved run (``mg.load_policy``): ``policy`` or the default Gaussian."""
    if policy is None:
        policy = gaussian(int(spec["obs_size"]), int(spec["action_size"]), config.actor_hidden)
    return OP.float32_obs(normalised_policy(config, policy)[1])


__all__ = ["ModelBasedConfig", "HParams", "MBLearner", "fit_indices", "buffer_obs_stats", "validate",
           "make_algo", "make_agent", "make_train_fn", "run", "train", "make_act_for", "normalised_policy"]
