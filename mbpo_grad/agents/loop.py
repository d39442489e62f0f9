"""The block loop that runs an ``Agent``: two drivers that give the same numbers.

* ``make_train_fn(agent, iterations, eval_every)`` → a pure ``train_fn(key, hparams)`` (a
  ``lax.scan`` over blocks of ``eval_every`` iterations with an evaluation after each
  block): jit it, vmap it over seeds and hyper-parameters (``mg.sweep``).
* ``run(agent, key, hparams, ...)`` → the same computation driven block by block from
  Python (one jitted block program), printing a progress line after each block; ``on_block``
  sees a ``RunProgress`` after each block (checkpoints, health checks), ``resume=`` continues
  from one, ``mesh=`` runs it data-parallel (``mbpo_grad.parallel``).

The per-iteration keys are split from the run's key up front (``TrainProgram.keys``), so a resumed
run draws what an uninterrupted one does. ``agents.driver`` adds run folders, checkpoints and
health checks on top of ``run``.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mbpo_grad.agents.common import Agent
from mbpo_grad.sweeps import sweep
from mbpo_grad.validation import check_int

PyTree = Any


class TrainProgram(NamedTuple):
    """A run of ``agent`` as pure pieces: ``init``, one ``block`` of ``eval_every`` iterations with
    its evaluation, and the keys of every block. ``make_train_fn``, ``run`` (and so ``train`` and
    the run folders), ``mg.sweep`` of a train function and the experiment runner all run these
    pieces, so they draw the same keys and give the same numbers.

    keys(key) -> (k_init, k_iter [iterations], k_eval [n_blocks]): split once from the run's key,
      so where a run stops and resumes does not change them.
    block(state, hparams, iteration_keys, eval_key) -> (state, metrics [len(keys)], eval_return).
    block_at(state, hparams, key, b) -> block b (b may be traced: one program for every block;
      needs ``iterations`` to be a multiple of ``eval_every``).
    """

    agent: Agent
    iterations: int
    eval_every: int

    @staticmethod
    def of(agent: Agent, iterations: int, eval_every: int) -> "TrainProgram":
        iterations, eval_every = _check_loop(iterations, eval_every)
        return TrainProgram(agent, iterations, eval_every)

    @property
    def n_blocks(self) -> int:
        return -(-self.iterations // self.eval_every)

    def keys(self, key):
        k_init, k_iter, k_eval = jax.random.split(key, 3)
        return k_init, jax.random.split(k_iter, self.iterations), jax.random.split(k_eval, self.n_blocks)

    def init(self, key, hparams):
        return self.agent.init(self.keys(key)[0], hparams)

    def block(self, state, hparams, keys, eval_key):
        def body(s, k):
            return self.agent.update(s, hparams, k)

        state, metrics = lax.scan(body, state, keys)
        return state, metrics, self.agent.evaluate(state, hparams, eval_key)

    def block_at(self, state, hparams, key, b):
        if self.iterations % self.eval_every:
            raise ValueError(f"block_at: iterations ({self.iterations}) must be a multiple of eval_every "
                             f"({self.eval_every}) for one program to serve every block")
        _, k_iter, k_eval = self.keys(key)
        keys = lax.dynamic_slice_in_dim(k_iter, b * self.eval_every, self.eval_every)
        return self.block(state, hparams, keys, k_eval[b])


def make_train_fn(agent: Agent, iterations: int, eval_every: int):
    """A pure ``train_fn(key, hparams) -> (state, metrics, eval_returns)``.

    metrics: dict of arrays with leading axis ``iterations``; eval_returns: [n_blocks], the
    evaluation after iterations eval_every, 2·eval_every, …, iterations.
    """
    program = TrainProgram.of(agent, iterations, eval_every)
    iterations, eval_every, block = program.iterations, program.eval_every, program.block
    n_full, rem = divmod(iterations, eval_every)

    def train_fn(key, hparams):
        k_init, k_iter, k_eval = program.keys(key)
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


def make_sweep_fn(train_fn: Callable, defaults: Any, iterations: int, eval_every: int) -> Callable:
    """``fn(key, hp) -> {"eval_return", "eval_env_steps", "final_return"}`` for ``mg.sweep`` from a
    pure ``train_fn(key, hparams)`` (``make_train_fn``). ``hp`` maps any subset of the ``HParams``
    names of ``defaults`` (an agent config's ``hparams()``) to traced scalars; the others keep
    their default values. Unknown names raise TypeError naming them."""
    its = eval_iterations(iterations, eval_every)
    fields = type(defaults)._fields

    def fn(key, hp):
        unknown = set(hp) - set(fields)
        if unknown:
            raise TypeError(f"hp: unknown hyper-parameter(s) {sorted(unknown)}; expected {fields}")
        full = defaults._replace(**{k: jnp.asarray(v, jnp.float32) for k, v in hp.items()})
        _, metrics, evals = train_fn(key, full)
        return {"eval_return": evals, "eval_env_steps": metrics["env_steps"][its - 1], "final_return": evals[-1]}

    return fn


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
    program = TrainProgram.of(agent, iterations, eval_every)
    iterations, eval_every = program.iterations, program.eval_every
    stream = stream or sys.stdout
    k_init, k_iter, k_eval = program.keys(key)
    if mesh is None:
        block, init, place = jax.jit(program.block), jax.jit(agent.init), (lambda s: s)
    else:
        from mbpo_grad import parallel

        shard = parallel.state_shardings(jax.eval_shape(agent.init, k_init, hparams), agent.env_axes, mesh)
        rep = parallel.replicated(mesh)
        block = jax.jit(program.block, in_shardings=(shard, rep, rep, rep), out_shardings=(shard, rep, rep))
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


def progress_line(name: str, it: int, iterations: int, last: Dict[str, float], eval_return: float,
                  extra: str, steps_width: int = 9) -> str:
    """An agent's progress line: ``[name] it i/N  env_steps …  train_return …  eval_return …  extra``
    (``train_return`` is the mean return of finished training episodes, "n/a" before the first)."""
    ret = last["episode_return"]
    ret_s = "      n/a" if not np.isfinite(ret) else f"{ret:9.2f}"
    return (f"[{name}] it {it:5d}/{iterations}  env_steps {int(last['env_steps']):{steps_width}d}  "
            f"train_return {ret_s}  eval_return {eval_return:9.2f}  {extra}")


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


__all__ = ["TrainProgram", "make_train_fn", "make_sweep_fn", "run", "RunProgress", "eval_iterations", "eval_curves_over_seeds",
           "progress_line"]
