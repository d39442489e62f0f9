"""One driver for every agent: blocks, evaluations, progress, checkpoints, exact resume, health, run folder.

    make_policy, params, metrics = shac.train(config, key, progress_fn=print, run_dir="runs/a")
    act = make_policy(params)            # jitted: act(obs) for one observation or a batch

Every agent's ``train`` is ``train(agent, ...)`` below on its ``Agent`` bundle, so every agent
gets the same things (the Brax training convention, ``train(...) -> (make_policy, params,
metrics)``):

* ``progress_fn(step, metrics)`` after every evaluation (``common.run``), and a one-line
  "compiling …" notice before the first block;
* ``checkpoint_dir`` / ``checkpoint_every`` / ``resume``: the whole train state, the metrics
  and evaluations so far saved atomically between blocks (``mbpo_grad.checkpoint``), guarded
  by the agent, its config, the hyper-parameters and the seed; ``resume=True`` continues from
  the newest complete checkpoint and gives exactly the uninterrupted run's numbers (the
  per-iteration keys are split from the seed up front);
* ``health``: a host-side monitor (``Health``) that sees each block's metrics and may stop
  the run (SHAC's skip-rate monitor);
* ``run_dir``: a run folder (``mbpo_grad.runs.RunWriter``: config.json, metrics.csv,
  TensorBoard events, the final policy, a learning-curve PNG, summary.json) that
  ``mg.load_policy(run_dir)`` reads back.

``run(...)`` is the same computation returning the final train state instead of the policy.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mbpo_grad import checkpoint as ckpt
from mbpo_grad.agents import common
from mbpo_grad.agents.common import Agent, RunProgress

PyTree = Any


class Health:
    """A host-side monitor of training health: ``update(metrics, new)`` returns a message to stop with.

    ``metrics``: every metric so far (NumPy arrays [iterations]); ``new``: the slice of this
    block's iterations. ``error``: the exception class raised with the message.
    """

    error = RuntimeError

    def update(self, metrics: Dict[str, np.ndarray], new: slice) -> Optional[str]:  # pragma: no cover
        raise NotImplementedError


def key_data(key: jax.Array) -> np.ndarray:
    """The raw uint32 data of a PRNG key (typed ``jax.random.key`` or raw ``PRNGKey``)."""
    raw = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return np.asarray(raw)


def guard_config(agent: Agent, config: Any, key: jax.Array, hparams: Any, *, env=None, policy=None) -> Dict[str, Any]:
    """The JSON dict a checkpoint is guarded by: agent, static config, hyper-parameter values,
    seed key (every per-iteration key is split from it), and custom env / policy names."""
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {
        "agent": agent.name,
        "config": cfg,
        "hparams": {k: np.asarray(v).tolist() for k, v in hparams._asdict().items()},
        "key": key_data(key).tolist(),
        "env": None if env is None else env.name,
        "policy": None if policy is None else policy.name,
    }


def progress_target(agent: Agent, key, hparams, done: int, eval_every: int, iterations: int) -> RunProgress:
    """A ``RunProgress`` with the shapes and dtypes of one saved after ``done`` iterations."""
    state = jax.eval_shape(agent.init, key, hparams)
    _, m = jax.eval_shape(agent.update, state, hparams, key)
    n_blocks = len([b for b in range(-(-iterations // eval_every)) if min((b + 1) * eval_every, iterations) <= done])
    return RunProgress(
        done, state, {k: np.zeros((done,), v.dtype) for k, v in m.items()},
        np.zeros((n_blocks,), np.int64), np.zeros((n_blocks,), np.float64),
    )


def _check_checkpointing(checkpoint_dir, checkpoint_every, resume, eval_every):
    if checkpoint_every is not None:
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, np.integer)) or \
                checkpoint_every < 1 or checkpoint_every % eval_every:
            raise ValueError(f"checkpoint_every must be a positive multiple of eval_every ({eval_every}) "
                             f"(checkpoints are taken between blocks), got {checkpoint_every!r}")
        if checkpoint_dir is None:
            raise ValueError("checkpoint_dir: needed with checkpoint_every")
    if resume and checkpoint_dir is None:
        raise ValueError("checkpoint_dir: resume=True needs the folder to resume from")


def run(
    agent: Agent,
    config: Any,
    key: jax.Array,
    hparams: Any,
    *,
    env=None,
    policy=None,
    progress: bool = True,
    stream=None,
    describe: Optional[Callable[[int, Dict[str, float], float], str]] = None,
    progress_fn: Optional[Callable[[int, Dict[str, float]], None]] = None,
    checkpoint_dir: Optional[str] = None,
    checkpoint_every: Optional[int] = None,
    resume: bool = False,
    keep_checkpoints: int = 2,
    health: Optional[Health] = None,
    run_dir: Optional[str] = None,
    tensorboard: bool = True,
    info: Optional[Dict[str, Any]] = None,
    devices: Any = None,
) -> Tuple[PyTree, Dict[str, Any]]:
    """Train ``agent`` for ``config.iterations`` iterations, evaluating every ``config.eval_every``.

    Returns (final train state, metrics): the per-iteration NumPy arrays of ``agent.update``'s
    metrics, plus ``eval_iteration``, ``eval_env_steps`` (when the agent reports ``env_steps``),
    ``eval_return`` (one per block; the final evaluation is ``metrics["eval_return"][-1]``) and
    ``wall_s``. ``env`` / ``policy``: a custom env / policy bundle the agent was built with (its
    name guards checkpoints and is recorded in the run folder). ``run_dir``: write the run
    folder there (``checkpoint_dir`` defaults to ``run_dir/ckpt`` when ``checkpoint_every`` or
    ``resume`` is given). ``info``: extra JSON-able facts for config.json (e.g. CLI arguments).
    ``devices``: run data-parallel over this many devices (an int), these devices (a list) or a
    ``jax.sharding.Mesh``: the env axis of the train state split over them, the rest replicated
    (``mbpo_grad.parallel``); the result equals the one-device run up to reduction order.
    """
    iterations = int(config.iterations)
    eval_every = min(int(config.eval_every), iterations)
    if run_dir is not None and checkpoint_dir is None and (checkpoint_every or resume):
        import os
        checkpoint_dir = os.path.join(run_dir, "ckpt")
    _check_checkpointing(checkpoint_dir, checkpoint_every, resume, eval_every)
    gcfg = guard_config(agent, config, key, hparams, env=env, policy=policy)
    writer = None
    if run_dir is not None:
        from mbpo_grad.runs import RunWriter
        writer = RunWriter(run_dir, gcfg, agent=agent, config=config, tensorboard=tensorboard,
                           info=info, resuming=bool(resume))

    start = None
    seen = [0]
    if resume:
        done = ckpt.latest_step(checkpoint_dir)
        if done is not None:
            target = progress_target(agent, key, hparams, done, eval_every, iterations)
            _, start = ckpt.restore(checkpoint_dir, config=gcfg, step=done, target=target)
            if health is not None:
                health.update(start.metrics, slice(0, done))
            seen[0] = done

    def on_block(prog: RunProgress):
        new = slice(seen[0], prog.iteration)
        seen[0] = prog.iteration
        so_far = with_evals(prog.metrics, prog.eval_iteration, prog.eval_return)
        if writer is not None:
            writer.block(so_far, new)
        msg = None if health is None else health.update(prog.metrics, new)
        if msg:
            err = health.error(f"[{agent.name}] training stopped at iteration {prog.iteration}/{iterations}: {msg}")
            err.state, err.metrics, err.iteration = prog.state, so_far, prog.iteration
            if writer is not None:
                writer.stopped(err.metrics, str(err), iteration=prog.iteration)
            raise err
        if checkpoint_every and (prog.iteration % checkpoint_every == 0 or prog.iteration == iterations):
            ckpt.save(checkpoint_dir, prog.iteration, prog, config=gcfg, keep=keep_checkpoints)

    mesh = None
    if devices is not None:
        from mbpo_grad import parallel

        mesh = devices if isinstance(devices, jax.sharding.Mesh) else parallel.data_mesh(devices)
    state, metrics, evals = common.run(agent, key, hparams, iterations=iterations, eval_every=eval_every,
                                       progress=progress, describe=describe, stream=stream, on_block=on_block,
                                       resume=start, progress_fn=progress_fn, mesh=mesh)
    metrics = with_evals(metrics, evals["iteration"], evals["eval_return"])
    metrics["wall_s"] = evals["wall_s"]
    if writer is not None:
        writer.finish(metrics, policy_params(agent, state, hparams), final_eval_key=final_eval_key(key, config))
    return state, metrics


def with_evals(metrics: Dict[str, np.ndarray], eval_iteration, eval_return) -> Dict[str, Any]:
    """``metrics`` plus ``eval_iteration``, ``eval_env_steps`` (when the agent reports
    ``env_steps``) and ``eval_return``: one entry per evaluation."""
    out = dict(metrics)
    its = np.asarray(eval_iteration, np.int64)
    out["eval_iteration"] = its
    if "env_steps" in out and its.size:
        out["eval_env_steps"] = np.asarray(out["env_steps"])[its - 1]
    out["eval_return"] = np.asarray(eval_return, np.float64)
    return out


def final_eval_key(key: jax.Array, config: Any) -> np.ndarray:
    """The key of the run's last evaluation (``common.run`` splits one per block from ``key``)."""
    _, _, k_eval = common.TrainProgram.of(None, int(config.iterations), int(config.eval_every)).keys(key)
    return key_data(k_eval[-1])


def policy_params(agent: Agent, state: PyTree, hparams: Any) -> PyTree:
    """The saved-policy parameters of ``state`` (``agent.policy_params``), as host NumPy arrays."""
    if agent.policy_params is None:
        raise ValueError(f"agent {agent.name!r} does not expose policy_params / act (needed for make_policy)")
    return jax.device_get(jax.jit(agent.policy_params)(state, hparams))


def make_policy_fn(act: Callable[[PyTree, jax.Array], jax.Array]) -> Callable[[PyTree], Callable]:
    """``make_policy(params) -> act(obs)``: jitted, for one observation [d] or a batch [B, d]."""
    one = jax.jit(act)
    batch = jax.jit(jax.vmap(act, in_axes=(None, 0)))

    def make_policy(params: PyTree) -> Callable[[jax.Array], jax.Array]:
        def policy(obs):
            obs = jnp.asarray(obs)
            return batch(params, obs) if obs.ndim == 2 else one(params, obs)

        return policy

    return make_policy


def train(agent: Agent, config: Any, key: jax.Array, hparams: Any, **run_kw):
    """``run`` and the Brax-style result: ``(make_policy, params, metrics)``.

    ``params``: the final policy parameters (``agent.policy_params``: nested dicts of NumPy
    arrays); ``make_policy(params)`` returns the jitted deterministic evaluation policy
    ``act(obs)`` (observation normalisation inside) — the one every evaluation used.
    """
    state, metrics = run(agent, config, key, hparams, **run_kw)
    return make_policy_fn(agent.act), policy_params(agent, state, hparams), metrics


__all__ = ["Health", "run", "train", "make_policy_fn", "policy_params", "guard_config", "progress_target",
           "final_eval_key", "key_data", "with_evals"]
