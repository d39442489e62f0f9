"""The training-loop skeleton every agent shares: collect → targets → critic step → actor step → log.

An agent is an ``Agent`` bundle of three pure functions of (train_state, hparams, key):

    init(key, hparams)               -> train_state
    update(train_state, hparams, key) -> (train_state, metrics)   # one iteration, scalars in metrics
    evaluate(train_state, hparams, key) -> scalar                  # mean undiscounted episode return

``hparams`` is a NamedTuple of float arrays (learning rates, γ, λ, τ, …): traced, so a sweep can
``vmap`` over them without recompiling. Everything static (shapes, horizon, network sizes)
is closed over when the agent is built.

Two drivers run an agent and give the same numbers:

* ``make_train_fn(agent, iterations, eval_every)`` → a pure ``train_fn(key, hparams)`` (a
  ``lax.scan`` over blocks of ``eval_every`` iterations with an evaluation after each
  block): jit it, vmap it over seeds and hyper-parameters (``mg.sweep``).
* ``run(agent, key, hparams, ...)`` → the same computation driven block by block from
  Python, printing a progress line after each block; ``on_block`` sees a ``RunProgress``
  after each block (checkpoints, health checks) and ``resume=`` continues from one.

Helpers for agents on a differentiable env: ``TimedState`` (an env state plus its step count
within the episode, so time limits are truncations the critic bootstraps over),
``timed_env``, ``reset_timed`` and ``reset_where``; ``make_optimizer`` (optax: global-norm clipping → Adam →
scheduled learning rate, the rate and clip norm injected hyper-parameters in the optimiser state) and
``init_optimizer`` (its state with a run's traced values).
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from mbpo_grad.policies.base import Policy
from mbpo_grad.rollout import TransitionReward, transition_reward
from mbpo_grad.sweeps import sweep
from mbpo_grad.validation import check_int, check_policy

PyTree = Any


# --------------------------------------------------------------------------- agent bundle
class Agent(NamedTuple):
    """An agent: pure functions of (train_state, hparams, key), and its evaluation policy.

    policy_params(train_state, hparams) -> params: what the evaluation policy needs, as nested
      dicts of arrays (policy network, observation statistics, ...): the saved policy.
    act(params, obs) -> action: the deterministic evaluation policy on ONE raw observation
      (normalisation inside). ``evaluate`` is ``evaluate_policy`` of exactly this ``act``, so a
      saved policy reproduces the run's evaluations.
    spec: JSON facts a saved policy needs: ``env`` (name), ``obs_size``, ``action_size``,
      ``episode_length``, ``eval_envs``, ``policy`` (the bundle's name).
    actor_objective(policy_params, batch) -> J [B]: the per-sample objective whose gradient
      the actor step of ``update`` ascends (``update`` calls this very function), so
      diagnostics and estimator comparisons measure the gradient that is trained. None for
      agents that do not expose it.
    actor_batch(train_state, hparams, key) -> batch: the ``batch`` the actor step
      differentiates ``actor_objective`` on, with the agent's own key splits: for the window
      agents (SHAC, BPO) exactly ``update(train_state, hparams, key)``'s (``shac.ActorBatch``);
      for the replay agents the first actor step of ``learn`` on the state's buffer as it is
      (``update`` collects first, then learns), e.g. ``offpolicy.ReplayActorBatch``. Either has
      ``axes()`` / ``singletons()`` for ``per_sample_grads``.
    env_axes: a prefix of the train state's structure with 0 where a part carries the env
      batch on its leading axis and None where it is shared (networks, optimisers, counters):
      how ``driver.run(devices=...)`` lays the state out over devices (``mbpo_grad.parallel``).
      None: the agent runs on one device only.
    """

    init: Callable[[jax.Array, Any], PyTree]
    update: Callable[[PyTree, Any, jax.Array], Tuple[PyTree, Dict[str, jax.Array]]]
    evaluate: Callable[[PyTree, Any, jax.Array], jax.Array]
    name: str = "agent"
    policy_params: Optional[Callable[[PyTree, Any], PyTree]] = None
    act: Optional[Callable[[PyTree, jax.Array], jax.Array]] = None
    spec: Optional[Dict[str, Any]] = None
    actor_objective: Optional[Callable[[PyTree, Any], jax.Array]] = None
    actor_batch: Optional[Callable[[PyTree, Any, jax.Array], Any]] = None
    env_axes: Optional[PyTree] = None


def per_sample_grads(actor_objective: Callable, policy_params: PyTree, batch: Any) -> Tuple[jax.Array, PyTree]:
    """(J [B], ∇_θ J_b with a leading axis B): each sample's objective and its own gradient.

    ``vmap`` over samples of ``value_and_grad`` of ``actor_objective`` (an ``Agent``'s) on one-sample
    batches: one backward pass per sample (memory B × |θ|). ``batch`` is an agent's actor batch
    with ``axes()`` (the ``vmap`` in_axes of the sample axis per field, None where shared) and
    ``singletons()`` (a size-1 sample axis inserted after each sample axis), as ``shac.ActorBatch``.
    The mean of these gradients is the gradient the actor step ascends (before clipping); their
    spread is what the gradient-variance diagnostics report.
    """
    def one(pp, one_sample):
        return actor_objective(pp, one_sample)[0]

    return jax.vmap(jax.value_and_grad(one), in_axes=(None, batch.axes()))(policy_params, batch.singletons())


def evaluate_policy(env, act: Callable, params: PyTree, key: jax.Array, *, num_envs: int, episode_length: int,
                    dtype=None, remat: Any = False) -> jax.Array:
    """Mean undiscounted return of ``act(params, obs)`` over ``num_envs`` fresh episodes.

    Every episode runs from ``env.reset`` for ``episode_length`` steps or until ``env.done``
    (through the engine, ``batched_unroll``); the env's own noise, if any, is drawn from
    ``key`` in ``dtype``. Episodes a simulator fault made non-finite are left out of the
    mean (``guards.masked_mean``). The same function evaluates during training and a saved
    policy afterwards (``mg.load_policy``), so both give the same number for the same key.
    """
    from mbpo_grad import guards
    from mbpo_grad.objectives import batched_unroll

    k_reset, k_xi = jax.random.split(key)
    s0 = jax.vmap(env.reset)(jax.random.split(k_reset, num_envs))

    def pi(pp, s, eps):
        del eps
        return act(pp, env.observe(s))

    xi = None
    if tuple(env.noise_shape) != ():
        shape = (episode_length, num_envs) + tuple(env.noise_shape)
        xi = jax.random.normal(k_xi, shape) if dtype is None else jax.random.normal(k_xi, shape, dtype)
    traj = batched_unroll(pi, params, env.step, env.reward, s0, horizon=episode_length,
                          dynamics_noise=xi, done=env.done, remat=remat)
    return guards.masked_mean(jnp.sum(traj.rewards, axis=1))[0]


def agent_spec(env, policy, episode_length: int, eval_envs: int) -> Dict[str, Any]:
    """``Agent.spec`` for an agent on ``env`` running ``policy`` (None for an actor-free agent)."""
    return {"env": env.name, "obs_size": int(env.obs_size), "action_size": int(env.action_size),
            "episode_length": int(episode_length), "eval_envs": int(eval_envs),
            "policy": None if policy is None else policy.name}


def normalised_policy_params(policy_params: PyTree, obs_stats) -> Dict[str, Any]:
    """The saved policy of a policy on normalised observations: its parameters and the
    ``normalizer.RunningStats`` as plain dicts (saved policies hold only dicts of arrays)."""
    return {"policy": policy_params,
            "obs_stats": {"count": obs_stats.count, "mean": obs_stats.mean, "m2": obs_stats.m2}}


def normalised_act(policy: Policy, obs_norm: bool) -> Callable[[PyTree, jax.Array], jax.Array]:
    """``act(params, obs)`` on ``normalised_policy_params``: the bundle's mode (ε = None) on the
    observation normalised with the saved statistics (``obs_norm=False``: the raw observation)."""
    from mbpo_grad import normalizer as N

    def act(params, obs):
        if obs_norm:
            s = params["obs_stats"]
            obs = N.normalize(N.RunningStats(s["count"], s["mean"], s["m2"]), obs)
        return policy.sample(params["policy"], obs, None)

    return act


# --------------------------------------------------------------------------- config validation
def pos_int(value, name, minimum=1):
    """``validation.check_int`` (the one integer check) for config fields."""
    return check_int(value, name, minimum=minimum)


def make_env(name, *, x64: bool = False, **kw):
    """The env a config names (``config.env``): ``envs.make(name, **kw)``, with the simulators
    (``brax:`` / ``mjx:``) built in float64 when ``x64`` (analytic envs follow the dtype of their
    inputs, so they need nothing). Errors name the config field ``env``."""
    from mbpo_grad import envs

    if not isinstance(name, str):
        raise TypeError(f"env must be an environment name (str), got {type(name).__name__}")
    if x64 and name.startswith(envs.FAMILIES):
        kw["x64"] = True
    try:
        return envs.make(name, **kw)
    except ValueError as err:
        raise ValueError(f"env: {err}") from None


def check_user_env(env):
    """A user's env (any ``envs.base.Env``), checked once with ``envs.check_env``: every function is
    traced with ``jax.eval_shape`` against the declared ``obs_size`` / ``action_size``, so a
    mismatch raises a ``ValueError`` naming the function and the shapes here, not deep inside a
    compiled training step. Returns ``env``."""
    from mbpo_grad import envs

    return envs.check_env(env)


def check_hidden(h, name):
    if not isinstance(h, (tuple, list)) or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in h):
        raise ValueError(f"{name} must be a tuple of positive ints, got {h!r}")


def policy_for(env, policy, default: Callable[[], Any], *, density_error: Optional[str] = None):
    """The policy bundle an agent runs: ``default()`` when ``policy`` is None, else ``policy``,
    checked to be a ``Policy`` whose sizes match ``env``, and traced once (``jax.eval_shape``,
    ``validation.check_policy``) so that an action of the wrong shape raises here instead of
    broadcasting silently. ``density_error``: the message of the ``ValueError`` for a
    deterministic bundle when the agent needs a density (the density is then traced too)."""
    if policy is None:
        policy = default()
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be a mbpo_grad.policies.Policy bundle, got {type(policy).__name__}")
    if density_error is not None and tuple(policy.noise_shape) == (0,):
        raise ValueError(density_error)
    if policy.obs_dim != env.obs_size or policy.act_dim != env.action_size:
        raise ValueError(f"policy: obs_dim/act_dim ({policy.obs_dim}, {policy.act_dim}) do not match the env "
                         f"({env.obs_size}, {env.action_size})")
    check_policy(policy, env.obs_size, env.action_size, density=density_error is not None)
    return policy


def _split_keys(key, iterations, eval_every):
    k_init, k_iter, k_eval = jax.random.split(key, 3)
    n_blocks = -(-iterations // eval_every)
    return k_init, jax.random.split(k_iter, iterations), jax.random.split(k_eval, n_blocks)


def _block_fn(agent: Agent):
    def block(state, hparams, keys, eval_key):
        def body(s, k):
            return agent.update(s, hparams, k)

        state, metrics = lax.scan(body, state, keys)
        return state, metrics, agent.evaluate(state, hparams, eval_key)

    return block


def make_train_fn(agent: Agent, iterations: int, eval_every: int):
    """A pure ``train_fn(key, hparams) -> (state, metrics, eval_returns)``.

    metrics: dict of arrays with leading axis ``iterations``; eval_returns: [n_blocks], the
    evaluation after iterations eval_every, 2·eval_every, …, iterations.
    """
    iterations, eval_every = _check_loop(iterations, eval_every)
    block = _block_fn(agent)
    n_full, rem = divmod(iterations, eval_every)

    def train_fn(key, hparams):
        k_init, k_iter, k_eval = _split_keys(key, iterations, eval_every)
        state = agent.init(k_init, hparams)
        metrics, evals = [], []
        if n_full:
            keys = k_iter[: n_full * eval_every].reshape((n_full, eval_every) + k_iter.shape[1:])

            def outer(s, xs):
                ks, ke = xs
                s, m, e = block(s, hparams, ks, ke)
                return s, (m, e)

            state, (m, e) = lax.scan(outer, state, (keys, k_eval[:n_full]))
            metrics.append(jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), m))
            evals.append(e)
        if rem:
            state, m, e = block(state, hparams, k_iter[n_full * eval_every:], k_eval[n_full])
            metrics.append(m)
            evals.append(e[None])
        metrics = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, 0), *metrics)
        return state, metrics, jnp.concatenate(evals, 0)

    return train_fn


def eval_iterations(iterations: int, eval_every: int) -> np.ndarray:
    """The iteration count at each evaluation of ``make_train_fn`` (eval_every, 2·eval_every, …, iterations)."""
    eval_every = min(eval_every, iterations)
    return np.minimum(np.arange(1, -(-iterations // eval_every) + 1) * eval_every, iterations)


def eval_curves_over_seeds(train_fn: Callable, hparams, iterations: int, eval_every: int, seeds) -> Dict[str, np.ndarray]:
    """``train_fn`` over seeds as one vmapped program (``mg.sweep``): env steps at each
    evaluation and the evaluation returns, both [seeds, evaluations]."""
    eval_its = eval_iterations(iterations, eval_every)

    def run(key, _):
        _, metrics, evals = train_fn(key, hparams)
        return {"env_steps": metrics["env_steps"][eval_its - 1], "eval_return": evals}

    out = sweep(run, seeds=seeds)
    return {k: v[0] for k, v in out.items()}   # drop the (single) grid axis


def _check_loop(iterations, eval_every):
    iterations, eval_every = check_int(iterations, "iterations"), check_int(eval_every, "eval_every")
    return iterations, min(eval_every, iterations)


class RunProgress(NamedTuple):
    """Where a block-by-block ``run`` stands after a block (what a checkpoint holds).

    iteration: iterations done (a block boundary); state: the agent's train state;
    metrics: dict of NumPy arrays [iteration] (every block so far); eval_iteration /
    eval_return: NumPy arrays [blocks done], the evaluation after each block.
    """

    iteration: int
    state: PyTree
    metrics: Dict[str, np.ndarray]
    eval_iteration: np.ndarray
    eval_return: np.ndarray


def run(
    agent: Agent,
    key: jax.Array,
    hparams: Any,
    *,
    iterations: int,
    eval_every: int,
    progress: bool = True,
    describe: Optional[Callable[[int, Dict[str, float], float], str]] = None,
    stream=None,
    on_block: Optional[Callable[[RunProgress], None]] = None,
    resume: Optional[RunProgress] = None,
    progress_fn: Optional[Callable[[int, Dict[str, float]], None]] = None,
    mesh: Any = None,
):
    """Run ``agent`` block by block (the computation of ``make_train_fn``), printing progress.

    progress_fn: called after every evaluation as ``progress_fn(step, metrics)`` (the Brax
      convention): ``step`` is the number of environment steps so far (the iteration count for
      an agent that reports no ``env_steps``), ``metrics`` a dict of floats: ``iteration``,
      ``eval_return`` and every training metric of the block's last iteration.

    on_block: called with the ``RunProgress`` after every block (after the progress line):
      checkpointing, host-side health checks; an exception it raises stops the run.
    resume: a ``RunProgress`` from an earlier run of the same agent, key, hyper-parameters,
      ``iterations`` and ``eval_every`` (e.g. restored from a checkpoint): the run continues
      after its last block and gives the metrics of an uninterrupted run (the per-iteration
      keys are split from ``key`` up front, so they do not depend on where it stopped).

    mesh: a ``jax.sharding.Mesh`` (``parallel.data_mesh``) to run data-parallel on: the state's
      env axis (``agent.env_axes``) split over its devices, everything else replicated; the same
      jitted programs with input / output shardings (``mbpo_grad.parallel``).

    Returns (state, metrics: dict of NumPy arrays [iterations], evals: dict with
    ``iteration`` and ``eval_return`` arrays [n_blocks], plus ``wall_s``).
    """
    iterations, eval_every = _check_loop(iterations, eval_every)
    stream = stream or sys.stdout
    k_init, k_iter, k_eval = _split_keys(key, iterations, eval_every)
    if mesh is None:
        block, init, place = jax.jit(_block_fn(agent)), jax.jit(agent.init), (lambda s: s)
    else:
        from mbpo_grad import parallel

        shard = parallel.state_shardings(jax.eval_shape(agent.init, k_init, hparams), agent.env_axes, mesh)
        rep = parallel.replicated(mesh)
        block = jax.jit(_block_fn(agent), in_shardings=(shard, rep, rep, rep), out_shardings=(shard, rep, rep))
        init = jax.jit(agent.init, in_shardings=(rep, rep), out_shardings=shard)
        place = lambda s: jax.device_put(s, shard)  # noqa: E731  (a restored state onto the mesh)
    t0 = time.perf_counter()
    if resume is None:
        state = init(k_init, hparams)
        chunks, eval_returns, eval_its = [], [], []
        done, first = 0, 0
    else:
        done, first = _check_resume(resume, iterations, eval_every)
        state = place(resume.state)
        chunks = [dict(resume.metrics)] if done else []
        eval_returns = [float(x) for x in np.asarray(resume.eval_return)]
        eval_its = [int(x) for x in np.asarray(resume.eval_iteration)]
    if progress and first < len(k_eval):
        print(f"[{agent.name}] compiling the training step (the first block includes it) ...",
              file=stream, flush=True)
    for b in range(first, len(k_eval)):
        ks = k_iter[done: done + eval_every]
        state, m, e = block(state, hparams, ks, k_eval[b])
        done += ks.shape[0]
        m = jax.device_get(m)
        chunks.append(m)
        eval_returns.append(float(e))
        eval_its.append(done)
        last = {k: float(np.asarray(v)[-1]) for k, v in m.items()}
        if progress:
            line = describe(done, last, float(e)) if describe else _default_line(done, iterations, last, float(e))
            print(f"{line}  [{time.perf_counter() - t0:6.1f}s]", file=stream, flush=True)
        if progress_fn is not None:
            step = int(last["env_steps"]) if "env_steps" in last else done
            progress_fn(step, {"iteration": float(done), "eval_return": float(e), **last})
        if on_block is not None:
            on_block(RunProgress(done, state, _concat(chunks), np.asarray(eval_its, np.int64),
                                 np.asarray(eval_returns, np.float64)))
    metrics = _concat(chunks)
    evals = {"iteration": np.asarray(eval_its, np.int64), "eval_return": np.asarray(eval_returns, np.float64),
             "wall_s": time.perf_counter() - t0}
    return state, metrics, evals


def _concat(chunks):
    if len(chunks) == 1:
        return {k: np.asarray(v) for k, v in chunks[0].items()}
    return {k: np.concatenate([np.asarray(c[k]) for c in chunks], 0) for k in chunks[0]}


def _check_resume(resume, iterations, eval_every):
    if not isinstance(resume, RunProgress):
        raise TypeError(f"resume must be a RunProgress, got {type(resume).__name__}")
    done = int(resume.iteration)
    n_blocks = len(np.asarray(resume.eval_iteration))
    expected = [min((b + 1) * eval_every, iterations) for b in range(n_blocks)]
    if done < 0 or done > iterations or list(np.asarray(resume.eval_iteration)) != expected or (
            n_blocks and expected[-1] != done) or (not n_blocks and done):
        raise ValueError(
            f"resume: iteration {done} with evaluations at {list(np.asarray(resume.eval_iteration))} is not a block "
            f"boundary of this run (iterations={iterations}, eval_every={eval_every})"
        )
    for k, v in resume.metrics.items():
        if np.shape(v)[:1] != (done,):
            raise ValueError(f"resume: metrics[{k!r}] has shape {np.shape(v)}, expected a leading axis of {done}")
    return done, n_blocks


def _default_line(it, iterations, last, eval_return):
    parts = [f"it {it:5d}/{iterations}"]
    for k in ("env_steps", "episode_return", "actor_loss", "critic_loss", "grad_norm", "skipped_updates",
              "masked_envs"):
        if k in last:
            v = last[k]
            parts.append(f"{k} {int(v):9d}" if k == "env_steps" else
                         f"{k} {int(v)}" if k in ("skipped_updates", "masked_envs") else f"{k} {v:9.3f}")
    parts.append(f"eval_return {eval_return:9.2f}")
    return "  ".join(parts)


# --------------------------------------------------------------------------- optimiser
def lr_schedule(schedule: str, learning_rate, total_steps: int) -> optax.Schedule:
    """The learning rate at optimiser step k of K = ``total_steps`` as an optax schedule:
    'constant' lr (``optax.constant_schedule``), 'linear' lr·(1 − k/K) (SHAC's,
    ``optax.linear_schedule`` to 0), 'cosine' lr·½(1 + cos(π k/K)) (``optax.cosine_decay_schedule``);
    k past K keeps the final value. ``learning_rate`` may be a traced array."""
    total = max(int(total_steps), 1)
    if schedule == "constant":
        return optax.constant_schedule(learning_rate)
    if schedule == "linear":
        return optax.linear_schedule(learning_rate, 0.0, total)
    if schedule == "cosine":
        return optax.cosine_decay_schedule(learning_rate, total)
    raise ValueError(f"lr_schedule must be 'constant', 'linear' or 'cosine', got {schedule!r}")


def lr_multiplier(schedule: str, count, total_steps: int):
    """Learning-rate factor at optimiser step ``count`` of ``total_steps`` (``lr_schedule`` of a unit rate)."""
    return jnp.asarray(lr_schedule(schedule, 1.0, total_steps)(count), jnp.float32)


def make_optimizer(learning_rate=None, max_grad_norm=0.0, *, total_steps: int, schedule: str = "linear",
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformationExtraArgs:
    """clip_by_global_norm(max_grad_norm) → Adam(b1, b2, eps) → −lr_schedule(learning_rate)(k).

    All optax: ``optax.clip_by_global_norm``, ``optax.scale_by_adam``,
    ``optax.scale_by_learning_rate`` of ``lr_schedule``, inside ``optax.inject_hyperparams``, so
    ``learning_rate`` and ``max_grad_norm`` are hyper-parameters held in the optimiser state
    (``state.hyperparams``): ``init`` stores them and ``update`` reads them from the state. An agent
    builds its optimiser once, leaving both None/default, and sets a run's (traced, possibly
    vmapped) values with ``init_optimizer(tx, params, learning_rate=hp.lr, ...)``; a sweep over
    them then carries a batched learning rate in the state and compiles once.
    ``max_grad_norm <= 0`` disables clipping (the clip norm becomes +inf). A ``learning_rate``
    left None is NaN until set, so forgetting to set it cannot pass unnoticed.
    """
    lr_schedule(schedule, 1.0, total_steps)  # validate the name eagerly

    def adam_chain(learning_rate, max_grad_norm):
        limit = jnp.asarray(max_grad_norm, jnp.float32)
        return optax.chain(
            optax.clip_by_global_norm(jnp.where(limit > 0, limit, jnp.inf)),
            optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
            optax.scale_by_learning_rate(lr_schedule(schedule, learning_rate, total_steps)),
        )

    return optax.inject_hyperparams(adam_chain)(
        learning_rate=float("nan") if learning_rate is None else learning_rate, max_grad_norm=max_grad_norm)


def init_optimizer(tx: optax.GradientTransformation, params: PyTree, **hyperparams) -> PyTree:
    """``tx.init(params)`` with the injected hyper-parameters named in ``hyperparams`` (e.g.
    ``learning_rate``, ``max_grad_norm`` of ``make_optimizer``, also inside wrappers such as
    ``guards.skip_nonfinite``) set to the given, possibly traced, values (``optax.tree.set``), in
    the dtype the state keeps them in (so ``lax.scan`` carries keep one type)."""
    state = tx.init(params)
    values = {}
    for name, value in hyperparams.items():
        try:
            current = optax.tree.get(state, name)
        except KeyError as err:
            raise ValueError(f"init_optimizer: the optimiser state holds no single hyper-parameter {name!r} ({err})") \
                from None
        if current is None:
            raise ValueError(f"init_optimizer: the optimiser state holds no hyper-parameter {name!r}")
        value = jnp.asarray(value)
        if value.shape != jnp.shape(current):
            raise ValueError(f"init_optimizer: {name} must be a scalar, got shape {value.shape}")
        values[name] = value.astype(jnp.asarray(current).dtype)
    return optax.tree.set(state, **values)


# --------------------------------------------------------------------------- envs with time limits
class TimedState(NamedTuple):
    """An env state and its step count ``t`` within the current episode (int32)."""

    env_state: PyTree
    t: jax.Array


def timed_env(env, episode_length: int):
    """Engine functions on ``TimedState``: (step, reward, done, terminal).

    done(ts) = time limit reached (t >= episode_length) or the env's own ``done``;
    terminal(ts) = the env's own ``done`` only (a time limit is a truncation, not a terminal
    state, so critics bootstrap over it).
    """
    def step(ts, action, xi):
        return TimedState(env.step(ts.env_state, action, xi), ts.t + 1)

    if isinstance(env.reward, TransitionReward) or getattr(env.reward, "uses_next_state", False):
        reward = transition_reward(lambda ts, a, ts_next: env.reward(ts.env_state, a, ts_next.env_state))
    else:
        def reward(ts, action):
            return env.reward(ts.env_state, action)

    def terminal(ts):
        if env.done is None:
            return jnp.zeros((), bool)
        return jnp.asarray(env.done(ts.env_state), bool)

    def done(ts):
        return (ts.t >= episode_length) | terminal(ts)

    return step, reward, done, terminal


def reset_timed(env, keys) -> TimedState:
    """Fresh ``TimedState`` batch from a batch of keys."""
    states = jax.vmap(env.reset)(keys)
    return TimedState(states, jnp.zeros((keys.shape[0],), jnp.int32))


def reset_where(env, ts: TimedState, mask: jax.Array, key) -> TimedState:
    """Replace the envs where ``mask`` [B] holds by fresh resets (t = 0); keep the others.

    Pass ``mask = traj.alive[:, -1] == 0`` after a window from the engine: an episode that
    ended inside the window (time limit or terminal) starts over.
    """
    fresh = reset_timed(env, jax.random.split(key, mask.shape[0]))

    def pick(f, s):
        m = jnp.reshape(mask, mask.shape + (1,) * (jnp.ndim(s) - 1))
        return jnp.where(m, f, s)

    return jax.tree_util.tree_map(pick, fresh, ts)


def stack_metrics(metrics: Dict[str, Any]) -> Dict[str, jax.Array]:
    """Every metric as a scalar array (floats as float32, counters keep their int dtype)."""
    out = {}
    for k, v in metrics.items():
        v = jnp.asarray(v).reshape(())
        out[k] = v if jnp.issubdtype(v.dtype, jnp.integer) else v.astype(jnp.float32)
    return out


__all__ = [
    "Agent", "make_train_fn", "run", "RunProgress", "lr_schedule", "lr_multiplier", "make_optimizer",
    "init_optimizer",
    "TimedState", "timed_env", "reset_timed", "reset_where", "stack_metrics",
]
