"""The shared loop of the replay-based (n = 0) agents: DDPG, TD3, SAC, NFQCA, fitted Q iteration.

Every iteration of ``make_agent(config, algo)`` (an ``Agent`` for ``common.run`` /
``common.make_train_fn``):

1. collect — ``steps_per_iteration`` steps of the ``num_envs`` environments (``vmap`` over
   envs, ``lax.scan`` over steps) with the algorithm's behaviour policy ``algo.act``
   (uniform random actions in [−1, 1] for the first ``warmup_steps`` transitions). Each
   transition (obs, action, reward, next_obs, discount = 1 − terminal) goes into a
   device-resident replay buffer (``mbpo_grad.replay``). An episode that hits the time
   limit is a truncation (discount 1: critics bootstrap over it); envs whose episode ended
   are reset (``common.reset_where``) and so is their exploration state.
2. learn — once ``warmup_steps`` transitions are stored, ``algo.learn(learner, buffer, hp,
   key)`` runs the algorithm's targets → critic steps → actor steps on the buffer.
3. log — per-iteration scalars (``env_steps``, ``episode_return`` of the last finished
   training episodes, the algorithm's losses).

``evaluate`` runs the algorithm's evaluation policy ``algo.eval_act`` (no exploration) for whole
episodes from ``eval_envs`` fresh resets through the engine (``common.evaluate_policy``).

An algorithm is an ``OffPolicyAlgo`` bundle of pure functions; static settings are closed
over, float hyper-parameters arrive as the traced ``hp`` NamedTuple.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mbpo_grad import replay
from mbpo_grad.agents import common, driver, hyperparams, loop
from mbpo_grad.agents.common import Agent, TimedState
from mbpo_grad.objectives import pathwise_returns

PyTree = Any


class OffPolicyAlgo(NamedTuple):
    """What an off-policy algorithm supplies to the shared loop (all pure functions).

    init(key, hp) -> learner                         networks, targets, optimiser states
    explore_init(num_envs) -> carry                  exploration state (e.g. OU noise), any pytree
    act(learner, obs [B, d], carry, key, hp) -> (actions [B, a], carry)   behaviour policy
    explore_reset(carry, mask [B]) -> carry          reset the exploration state of ended episodes
    learn(learner, buffer, hp, key) -> (learner, metrics: dict of scalars)
    name                                             the agent's name
    policy_params(learner, hp) -> params              what the evaluation policy needs (dicts of
                                                     arrays): the saved policy
    eval_act(params, obs [d]) -> action [a]           the evaluation policy on a float32 observation
    actor_objective(actor_params, batch) -> J [M]     the per-sample objective each actor step of
                                                     ``learn`` ascends (``Agent.actor_objective``)
    actor_batch(learner, buffer, hp, key) -> batch    a batch drawn as ``learn`` draws one for an
                                                     actor step (``Agent.actor_batch``); both None
                                                     for an algorithm that does not expose them
    behaviour_log_prob(learner, obs [B, d], actions [B, a], hp) -> [B]
                                                     optional: log μ(a|s) of ``act``'s actions under the
                                                     behaviour policy, evaluated at the stored action;
                                                     when given, the buffer keeps it per transition
                                                     (field ``behaviour_log_prob``; the uniform warm-up
                                                     actions get −act_dim·log 2), for importance weights

    ``greedy(learner, obs, hp)`` is the evaluation policy on a learner: eval_act ∘ policy_params.
    """

    init: Callable
    explore_init: Callable
    act: Callable
    explore_reset: Callable
    learn: Callable
    name: str
    policy_params: Callable
    eval_act: Callable
    actor_objective: Optional[Callable] = None
    actor_batch: Optional[Callable] = None
    behaviour_log_prob: Optional[Callable] = None

    def greedy(self, learner, obs, hp):
        """The evaluation action for one observation ``obs`` [d] of a learner (no exploration)."""
        return self.eval_act(self.policy_params(learner, hp), obs)


def actor_policy(policy):
    """(policy_params, eval_act) of an algorithm whose evaluation policy is its actor's mode."""
    def policy_params(learner, hp):
        del hp
        return {"policy": learner.actor}

    def eval_act(params, obs):
        return policy.sample(params["policy"], obs, None)

    return policy_params, eval_act


def float32_obs(eval_act):
    """``act(params, obs)`` on a raw observation: cast to float32 as the replay buffer stores it."""
    return lambda params, obs: eval_act(params, jnp.asarray(obs).astype(jnp.float32))


# --------------------------------------------------------------------------- the actor step's objective
class ReplayActorBatch(NamedTuple):
    """What one actor step of a replay agent differentiates on: ``OffPolicyAlgo.actor_objective(actor_params, batch)``.

    obs: [M, d] replay observations s_i.
    policy_noise: [M, *noise_shape] ε_i of a reparameterised stochastic actor (SAC), or None (the
      actor's mode, ε = None: DDPG, TD3, NFQCA).
    critic: the critic parameters the step ascends (those of ``learn``'s preceding critic step).
    alpha: the temperature α of SAC's soft objective (a scalar), None for the others.

    Sample i sits on axis ``axes()`` of each field (None: shared); ``singletons()`` inserts a
    size-1 sample axis after it, so ``common.per_sample_grads`` hands one-sample batches.
    """

    obs: jax.Array
    policy_noise: Optional[jax.Array]
    critic: PyTree
    alpha: Optional[jax.Array] = None

    def axes(self) -> "ReplayActorBatch":
        """``vmap`` in_axes of the sample axis per field (None: shared by every sample)."""
        return ReplayActorBatch(0, None if self.policy_noise is None else 0, None, None)

    def singletons(self) -> "ReplayActorBatch":
        """The batch with a size-1 sample axis inserted after each sample axis (for per-sample ``vmap``)."""
        grow = lambda x: None if x is None else jnp.expand_dims(x, 1)
        return self._replace(obs=grow(self.obs), policy_noise=grow(self.policy_noise))


def actor_q_values(policy: Callable, params: PyTree, critic: Callable, obs: jax.Array,
                   policy_noise: Optional[jax.Array] = None) -> jax.Array:
    """J_i = Q(s_i, π(s_i, ε_i)), shape [M]: the engine's n = 0 returns, whose mean is ``mg.actor_q_objective``.

    ``policy(params, obs, ε)`` and ``critic(obs, action)`` act on one sample (the engine's
    convention, ``objectives.pathwise_returns`` at horizon 0 with ``critic`` as the bootstrap);
    obs [M, d]; policy_noise [M, *noise_shape] or None (docs/theory.md §1, n = 0).
    """
    def no_step(s, a, xi):  # never called at horizon 0
        return s

    def no_reward(s, a):
        return jnp.zeros(())

    eps = None if policy_noise is None else policy_noise[None]
    return pathwise_returns(policy, params, no_step, no_reward, obs, horizon=0, bootstrap=critic,
                            policy_noise=eps)[0]


def actor_adam_step(actor_objective: Callable, opt, params: PyTree, opt_state: PyTree, batch: ReplayActorBatch):
    """(params, opt_state, loss): one ``opt`` step on L(θ) = −mean_i J_i(θ), J = ``actor_objective(θ, batch)``."""
    loss, g = jax.value_and_grad(lambda p: -jnp.mean(actor_objective(p, batch)))(params)
    upd, opt_state = opt.update(g, opt_state, params)
    return optax.apply_updates(params, upd), opt_state, loss


@dataclasses.dataclass(frozen=True)
class OffPolicyConfig(hyperparams.Config):
    """Static settings shared by the replay-based agents (subclassed per agent).

    num_envs × steps_per_iteration transitions are collected per iteration; the first
    ``warmup_steps`` transitions use uniform random actions and no learning happens before
    they are stored. ``updates_per_iteration`` is the number of gradient steps an iteration
    takes (its meaning per algorithm: critic steps for DDPG/TD3/SAC). ``collect_iterations``:
    None collects every iteration; k stops interacting after k iterations, so learning
    continues on a fixed batch of transitions (batch RL).
    """

    env: str = "pendulum"
    num_envs: int = 8
    episode_length: Optional[int] = None
    iterations: int = 1000
    steps_per_iteration: int = 1
    updates_per_iteration: int = 8
    batch_size: int = 128
    buffer_size: int = 100_000
    warmup_steps: int = 1000
    actor_hidden: Tuple[int, ...] = (64, 64)
    critic_hidden: Tuple[int, ...] = (64, 64)
    eval_every: int = 50
    eval_envs: int = 16
    collect_iterations: Optional[int] = None

    @property
    def env_steps_per_iteration(self) -> int:
        return self.num_envs * self.steps_per_iteration


class OffPolicyState(NamedTuple):
    learner: PyTree
    buffer: replay.ReplayBuffer
    env_state: TimedState
    explore: PyTree
    ep_return: jax.Array       # [B] return of the running episode so far
    last_return: jax.Array     # [B] return of each env's last finished episode
    finished: jax.Array        # [B] bool: has finished an episode
    env_steps: jax.Array       # int32: transitions collected
    iteration: jax.Array


# Data-parallel layout (``mbpo_grad.parallel``): envs and their exploration state split over the
# devices; learner and replay buffer replicated (collected transitions are gathered into it).
ENV_AXES = OffPolicyState(learner=None, buffer=None, env_state=0, explore=0, ep_return=0, last_return=0,
                          finished=0, env_steps=None, iteration=None)


# --------------------------------------------------------------------------- validation
pos_int, make_env, check_hidden = common.pos_int, common.make_env, common.check_hidden


def check_hparams(hp, *, unit=(), positive=(), nonneg=(), finite=()):
    """Concrete-value checks of an hparams NamedTuple (tracers pass); errors name the field."""
    def vals(name):
        v = getattr(hp, name)
        if isinstance(v, jax.core.Tracer):
            return None
        return np.asarray(v, np.float64)

    for name in unit:
        v = vals(name)
        if v is not None and (not np.all(np.isfinite(v)) or v.min() < 0 or v.max() > 1):
            raise ValueError(f"{name} must lie in [0, 1], got {getattr(hp, name)}")
    for name in positive:
        v = vals(name)
        if v is not None and (not np.all(np.isfinite(v)) or v.min() <= 0):
            raise ValueError(f"{name} must be a finite float > 0, got {getattr(hp, name)}")
    for name in nonneg:
        v = vals(name)
        if v is not None and (not np.all(np.isfinite(v)) or v.min() < 0):
            raise ValueError(f"{name} must be a finite float >= 0, got {getattr(hp, name)}")
    for name in finite:
        v = vals(name)
        if v is not None and not np.all(np.isfinite(v)):
            raise ValueError(f"{name} must be finite, got {getattr(hp, name)}")


def validate(config: OffPolicyConfig, config_cls, env=None):
    """Check the shared static fields; returns (env, episode_length)."""
    if not isinstance(config, config_cls):
        raise TypeError(f"config must be a {config_cls.__name__}, got {type(config).__name__}")
    env, episode_length = common.config_env(config, env)
    for name in ("num_envs", "iterations", "steps_per_iteration", "batch_size", "buffer_size", "eval_every",
                 "eval_envs"):
        pos_int(getattr(config, name), name)
    pos_int(config.updates_per_iteration, "updates_per_iteration", minimum=0)
    pos_int(config.warmup_steps, "warmup_steps", minimum=0)
    if config.buffer_size < config.num_envs * config.steps_per_iteration:
        raise ValueError(f"buffer_size ({config.buffer_size}) must hold one iteration's transitions "
                         f"(num_envs*steps_per_iteration = {config.num_envs * config.steps_per_iteration})")
    if config.collect_iterations is not None:
        pos_int(config.collect_iterations, "collect_iterations")
    check_hidden(config.actor_hidden, "actor_hidden")
    check_hidden(config.critic_hidden, "critic_hidden")
    return env, episode_length


# --------------------------------------------------------------------------- env helpers
def env_reward(env, s, a, s_next):
    """r(s, a) or, for a ``transition_reward`` (Brax), r(s, a, s')."""
    if getattr(env.reward, "uses_next_state", False):
        return env.reward(s, a, s_next)
    return env.reward(s, a)


def env_terminal(env, s):
    if env.done is None:
        return jnp.zeros((), bool)
    return jnp.asarray(env.done(s), bool)


def transition_example(env, behaviour_log_prob: bool = False) -> Dict[str, jax.Array]:
    """One replay item (shapes and dtypes) for ``env``; ``behaviour_log_prob`` adds that scalar field."""
    obs = jnp.zeros((env.obs_size,), jnp.float32)
    item = {"obs": obs, "action": jnp.zeros((env.action_size,), jnp.float32), "reward": jnp.zeros((), jnp.float32),
            "next_obs": obs, "discount": jnp.zeros((), jnp.float32)}
    if behaviour_log_prob:
        item["behaviour_log_prob"] = jnp.zeros((), jnp.float32)
    return item


def sample_batches(buffer, key, num: int, batch_size: int):
    """``num`` minibatches of ``batch_size`` replay items, leading axes [num, batch_size]."""
    items = replay.sample(buffer, key, num * batch_size)
    return jax.tree_util.tree_map(lambda x: x.reshape((num, batch_size) + x.shape[1:]), items)


def zeros_like_metrics(fn, *args):
    """Zero scalars with the structure of ``fn(*args)[1]`` (for the no-learning branch of a cond)."""
    shapes = jax.eval_shape(fn, *args)[1]
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


# --------------------------------------------------------------------------- the agent
def make_agent(config: OffPolicyConfig, algo: OffPolicyAlgo, env, episode_length: int) -> Agent:
    """The ``Agent`` (init, update, evaluate) running ``algo`` in the shared loop on ``env``."""
    B, K = int(config.num_envs), int(config.steps_per_iteration)
    dyn_noise = tuple(env.noise_shape) != ()
    act_dim = env.action_size
    warmup = int(config.warmup_steps)
    learn_after = max(warmup, int(config.batch_size))

    def init(key, hp):
        k_learn, k_env = jax.random.split(key)
        learner = algo.init(k_learn, hp)
        buf = replay.init(int(config.buffer_size), transition_example(env, algo.behaviour_log_prob is not None))
        ts = common.reset_timed(env, jax.random.split(k_env, B))
        zeros = jnp.zeros((B,), jnp.float32)
        return OffPolicyState(learner, buf, ts, algo.explore_init(B), zeros, zeros, jnp.zeros((B,), bool),
                              jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def collect_step(carry, key, learner, hp):
        ts, explore, ep_ret, last_ret, finished, env_steps = carry
        k_act, k_rand, k_xi, k_reset = jax.random.split(key, 4)
        s = ts.env_state
        obs = jax.vmap(env.observe)(s).astype(jnp.float32)
        a_explore, explore = algo.act(learner, obs, explore, k_act, hp)
        a_random = jax.random.uniform(k_rand, (B, act_dim), jnp.float32, -1.0, 1.0)
        a = jnp.where(env_steps < warmup, a_random, a_explore)
        xi = jax.random.normal(k_xi, (B,) + tuple(env.noise_shape)) if dyn_noise else None
        s_next = jax.vmap(env.step, in_axes=(0, 0, 0 if dyn_noise else None))(s, a, xi)
        r = jax.vmap(lambda s0, a0, s1: env_reward(env, s0, a0, s1))(s, a, s_next).astype(jnp.float32)
        term = jax.vmap(lambda s1: env_terminal(env, s1))(s_next)
        trunc = ts.t + 1 >= episode_length
        next_obs = jax.vmap(env.observe)(s_next).astype(jnp.float32)
        tr = {"obs": obs, "action": a, "reward": r, "next_obs": next_obs,
              "discount": 1.0 - term.astype(jnp.float32)}
        if algo.behaviour_log_prob is not None:  # log μ(a|s): uniform on [−1, 1]^act_dim during warm-up
            lp = algo.behaviour_log_prob(learner, obs, a_explore, hp)
            tr["behaviour_log_prob"] = jnp.where(env_steps < warmup, -act_dim * np.log(2.0), lp).astype(jnp.float32)
        ended = term | trunc
        acc = ep_ret + r
        last_ret = jnp.where(ended, acc, last_ret)
        finished = finished | ended
        ep_ret = jnp.where(ended, 0.0, acc)
        ts = common.reset_where(env, TimedState(s_next, ts.t + 1), ended, k_reset)
        explore = algo.explore_reset(explore, ended)
        return (ts, explore, ep_ret, last_ret, finished, env_steps + B), tr

    def update(state: OffPolicyState, hp, key):
        k_col, k_learn = jax.random.split(key)
        carry0 = (state.env_state, state.explore, state.ep_return, state.last_return, state.finished,
                  state.env_steps)

        def collect(args):
            c0, buf = args
            c, trs = jax.lax.scan(lambda c, k: collect_step(c, k, state.learner, hp), c0, jax.random.split(k_col, K))
            buf = replay.add(buf, jax.tree_util.tree_map(lambda x: x.reshape((K * B,) + x.shape[2:]), trs))
            return c, buf, jnp.mean(trs["reward"])

        if config.collect_iterations is None:
            carry, buf, mean_r = collect((carry0, state.buffer))
        else:  # a fixed batch: no more interaction after collect_iterations iterations
            carry, buf, mean_r = jax.lax.cond(
                state.iteration < config.collect_iterations, collect,
                lambda args: (args[0], args[1], jnp.full((), jnp.nan, jnp.float32)), (carry0, state.buffer))
        ts, explore, ep_ret, last_ret, finished, env_steps = carry

        def do_learn(learner):
            return algo.learn(learner, buf, hp, k_learn)

        def skip(learner):
            return learner, zeros_like_metrics(do_learn, learner)

        learner, lm = jax.lax.cond(env_steps >= learn_after, do_learn, skip, state.learner)
        n_fin = jnp.sum(finished)
        episode_return = jnp.where(n_fin > 0, jnp.sum(jnp.where(finished, last_ret, 0.0)) / jnp.maximum(n_fin, 1),
                                   jnp.nan)
        new_state = OffPolicyState(learner, buf, ts, explore, ep_ret, last_ret, finished, env_steps,
                                   state.iteration + 1)
        metrics = common.stack_metrics({"env_steps": env_steps, "episode_return": episode_return,
                                        "reward_per_step": mean_r, **lm})
        return new_state, metrics

    act = float32_obs(algo.eval_act)

    def policy_params(state: OffPolicyState, hp):
        return algo.policy_params(state.learner, hp)

    def evaluate(state: OffPolicyState, hp, key):
        return common.evaluate_policy(env, act, policy_params(state, hp), key, num_envs=config.eval_envs,
                                      episode_length=episode_length)

    actor_batch = None
    if algo.actor_batch is not None:
        def actor_batch(state: OffPolicyState, hp, key):
            return algo.actor_batch(state.learner, state.buffer, hp, key)

    return Agent(init, update, evaluate, algo.name, policy_params, act,
                 common.agent_spec(env, None, episode_length, config.eval_envs),
                 actor_objective=algo.actor_objective, actor_batch=actor_batch, env_axes=ENV_AXES)


def describe_fn(agent: Agent, config: OffPolicyConfig):
    """The progress line of an off-policy agent."""
    def describe(it, last, ev):
        extra = "  ".join(f"{k} {last[k]:9.3g}" for k in ("critic_loss", "actor_loss", "alpha") if k in last)
        return loop.progress_line(agent.name, it, config.iterations, last, ev, extra, steps_width=8)

    return describe


def run(agent: Agent, config: OffPolicyConfig, key, hparams, **run_kw):
    """``driver.run`` with the off-policy progress line: (final ``OffPolicyState``, metrics).

    metrics: the per-iteration metrics and ``eval_iteration``, ``eval_env_steps``,
    ``eval_return`` (one per block of ``eval_every`` iterations) and ``wall_s``; the final
    evaluation is ``metrics["eval_return"][-1]``. ``run_kw``: see ``driver.run`` (progress,
    progress_fn, checkpoint_dir / checkpoint_every / resume, run_dir, ...).
    """
    run_kw.setdefault("describe", describe_fn(agent, config))
    return driver.run(agent, config, key, hparams, **run_kw)


def _agent_and_hparams(make_agent: Callable, check: Callable, config: OffPolicyConfig, hparams, env, policy,
                       agent_kw):
    hparams = config.checked_hparams(hparams, check)
    return make_agent(config, env=env, policy=policy, **(agent_kw or {})), hparams


def run_agent(make_agent: Callable, check: Callable, config: OffPolicyConfig, key, *, hparams=None, env=None,
              policy=None, agent_kw=None, **run_kw):
    """(final state, metrics) of the agent ``make_agent(config, env=, policy=, **agent_kw)`` (``run``)."""
    agent, hparams = _agent_and_hparams(make_agent, check, config, hparams, env, policy, agent_kw)
    return run(agent, config, key, hparams, env=env, policy=policy, **run_kw)


def train(make_agent: Callable, check: Callable, config: OffPolicyConfig, key, *, hparams=None, env=None,
          policy=None, agent_kw=None, **run_kw):
    """``(make_policy, params, metrics)`` of the agent ``make_agent(config, ...)`` (``driver.train``)."""
    agent, hparams = _agent_and_hparams(make_agent, check, config, hparams, env, policy, agent_kw)
    run_kw.setdefault("describe", describe_fn(agent, config))
    return driver.train(agent, config, key, hparams, env=env, policy=policy, **run_kw)


def make_train_fn(agent: Agent, config: OffPolicyConfig):
    """A pure ``train_fn(key, hparams) -> (state, metrics, eval_returns)`` (jit / vmap / sweeps)."""
    return common.make_train_fn(agent, config.iterations, config.eval_every)


@dataclasses.dataclass(frozen=True)
class ActorAgent:
    """The entry points of an off-policy agent whose evaluation policy is its actor's mode.

    DDPG, TD3, SAC and NFQCA differ only in these parts; each module binds them once:

        AGENT = OP.ActorAgent("ddpg", validate, make_algo, default_policy, check_hparams)
        make_agent, make_train_fn, run, train, make_act_for = (AGENT.make_agent, AGENT.make_train_fn,
                                                               AGENT.run, AGENT.train, AGENT.make_act_for)

    validate(config, env) -> (env, episode_length); make_algo(config, env, policy) -> OffPolicyAlgo;
    default_policy(config, obs_size, action_size) -> Policy; check_hparams(hp) raises on bad values.
    """

    name: str
    validate: Callable
    make_algo: Callable
    default_policy: Callable
    check_hparams: Callable

    def make_agent(self, config, *, env=None, policy=None) -> Agent:
        """The ``Agent`` on ``env`` (default ``config.env``) with ``policy`` (default the config's)."""
        env, episode_length = self.validate(config, env)
        return make_agent(config, self.make_algo(config, env, policy), env, episode_length)

    def make_train_fn(self, config, *, env=None, policy=None):
        """A pure ``train_fn(key, hparams) -> (state, metrics, eval_returns)`` (jit / vmap / sweeps)."""
        return make_train_fn(self.make_agent(config, env=env, policy=policy), config)

    def run(self, config, key, **kw):
        """(final ``OffPolicyState``, metrics); keywords as ``train``."""
        return run_agent(self.make_agent, self.check_hparams, config, key, **kw)

    def train(self, config, key, **kw):
        """Train: ``(make_policy, params, metrics)`` (``driver.train``).

        Keywords: ``hparams``, ``env``, ``policy``, and ``driver.run``'s (``progress``,
        ``progress_fn``, ``checkpoint_dir`` / ``checkpoint_every`` / ``resume``, ``run_dir``, ...).
        """
        return train(self.make_agent, self.check_hparams, config, key, **kw)

    def make_act_for(self, config, spec, policy=None):
        """``act(params, obs)`` of a saved run (``mg.load_policy``): ``policy`` or the default bundle."""
        if policy is None:
            policy = self.default_policy(config, int(spec["obs_size"]), int(spec["action_size"]))
        return float32_obs(actor_policy(policy)[1])


def adam(lr=None, max_grad_norm=0.0):
    """Adam (constant schedule), optional global-norm clipping: ``common.make_optimizer``, whose
    learning rate and clip norm live in the optimiser state. Build it once per agent and set a
    run's traced values with ``adam_init``."""
    return common.make_optimizer(lr, max_grad_norm, total_steps=1, schedule="constant")


def adam_init(opt, params, lr):
    """``opt``'s state for ``params`` with learning rate ``lr`` (traced; ``common.init_optimizer``)."""
    return common.init_optimizer(opt, params, learning_rate=lr)


__all__ = ["OffPolicyAlgo", "OffPolicyConfig", "OffPolicyState", "make_agent", "run", "validate", "actor_policy",
           "float32_obs", "ReplayActorBatch", "actor_q_values", "actor_adam_step", "describe_fn", "train",
           "make_train_fn", "ActorAgent",
           "sample_batches", "transition_example", "check_hparams", "adam", "adam_init", "make_env"]
