"""Training SHAC / BPO: ``train`` (the Brax convention), ``run``, the pure ``make_train_fn`` for
``jit`` / ``vmap`` / ``mg.sweep``, and the skip-rate health check.

Every run goes through ``agents.driver`` (blocks of ``eval_every`` jitted iterations, evaluations,
``progress_fn``, checkpoints and exact resume, the run folder); this file adds SHAC's progress
line and its health monitor (``SkipHealth``: a run whose updates keep being skipped stops with
``guards.SkipRateExceeded`` and the likely cause).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np

from mbpo_grad import guards
from mbpo_grad.agents import common, driver, loop
from mbpo_grad.agents.common import Agent
from mbpo_grad.agents.shac.agent import SHACState, make_agent
from mbpo_grad.agents.shac.config import HParams, SHACConfig, check_hparams
from mbpo_grad.policies.base import Policy


def make_train_fn(config: SHACConfig, *, env=None, policy: Optional[Policy] = None):
    """A pure ``train_fn(key, hparams) -> (state, metrics, eval_returns)`` for jit / vmap / sweeps."""
    agent = make_agent(config, env=env, policy=policy)
    return common.make_train_fn(agent, config.iterations, config.eval_every)


def make_sweep_fn(config: SHACConfig, *, env=None, policy: Optional[Policy] = None):
    """``fn(key, hp) -> {"eval_return", "eval_env_steps", "final_return"}`` for ``mg.sweep``.

    ``hp`` maps any subset of the ``HParams`` names to traced scalars; the others come from
    ``config``. Example: ``mg.sweep(make_sweep_fn(cfg), seeds=8, hparams={"actor_lr": [3e-3, 1e-2]})``.
    """
    train_fn = make_train_fn(config, env=env, policy=policy)
    return loop.make_sweep_fn(train_fn, config.hparams(), config.iterations, config.eval_every)


def checkpoint_config(config: SHACConfig, key: jax.Array, hparams: HParams, *, env=None,
                      policy: Optional[Policy] = None) -> Dict[str, Any]:
    """The JSON dict a checkpoint of this run is guarded by (``driver.guard_config``)."""
    return driver.guard_config(make_agent(config, env=env, policy=policy), config, key, hparams, env=env,
                               policy=policy)


class SkipHealth(driver.Health):
    """Stops a run whose skip rate stays above ``config.skip_threshold`` (``guards.SkipMonitor``).

    An update counts as unhealthy when it was skipped or more than half of its envs were masked.
    """

    error = guards.SkipRateExceeded

    def __init__(self, config: SHACConfig):
        self.num_envs = int(config.num_envs)
        self.monitor = guards.SkipMonitor(window=config.skip_window, threshold=config.skip_threshold,
                                          horizon=int(config.horizon),
                                          dtype=np.float64 if config.x64 else np.float32)

    def update(self, metrics, new):
        bad = (np.asarray(metrics["skipped_updates"][new]) > 0) | \
              (2 * np.asarray(metrics["masked_envs"][new]) > self.num_envs)
        msg = self.monitor.update(bad, metrics["max_env_grad_norm"][new])
        if msg:
            return (f"{msg} (An update counts as skipped when it was skipped or more than half of its "
                    "environments were masked; the parameters were left finite.)")
        return None


def _describe(agent: Agent, config: SHACConfig):
    def describe(it, last, ev):
        return loop.progress_line(agent.name, it, config.iterations, last, ev,
                                  f"grad_norm {last['grad_norm']:8.3g}  skipped {int(last['total_skipped'])}  "
                                  f"masked_envs {int(last['masked_envs'])}")

    return describe


def run(config: SHACConfig, key: jax.Array, *, hparams: Optional[HParams] = None, env=None,
        policy: Optional[Policy] = None, **run_kw) -> Tuple[SHACState, Dict[str, Any]]:
    """Train SHAC (or BPO) and return (final ``SHACState``, metrics); ``train`` without the policy step.

    metrics: per-iteration NumPy arrays (``env_steps``, ``episode_return`` — the mean return of
    each env's last finished training episode, NaN before any finished — ``window_return``,
    ``reward_per_step``, ``actor_loss``, ``critic_loss``, ``grad_norm`` (the applied actor
    gradient's norm before clipping), ``max_env_grad_norm`` (largest per-env norm, NaN/inf
    when an env's gradient was non-finite; the batch norm under ``guard="batch"``),
    ``skipped_updates`` (0/1), ``total_skipped``, ``masked_envs``, ``reset_envs`` (envs reset
    because their window was unusable) and ``critic_skipped`` (critic minibatch steps skipped)),
    plus the evaluations (deterministic policy, ``eval_envs`` fresh resets, full episodes)
    every ``eval_every`` iterations and at the end: ``eval_iteration``, ``eval_env_steps``,
    ``eval_return``; and ``wall_s``. The final evaluation is ``metrics["eval_return"][-1]``.

    ``run_kw`` go to ``driver.run``: ``progress``, ``stream``, ``progress_fn(step, metrics)``,
    ``checkpoint_dir`` / ``checkpoint_every`` (a multiple of ``eval_every``) / ``resume`` /
    ``keep_checkpoints`` (exact resume from atomic checkpoints, refused under another config,
    hyper-parameters or seed), ``run_dir`` (the run folder), ``tensorboard``, ``info``.

    Raises:
      guards.SkipRateExceeded: more than ``config.skip_threshold`` of the last
        ``config.skip_window`` updates were unhealthy (skipped, or more than half of the envs
        masked). The message names the likely causes and remedies; the exception carries
        ``state`` (the last state: its parameters are finite, bad updates never reached them),
        ``metrics`` and ``iteration``.
    """
    agent, config, key, hparams, kw = _prepare(config, key, hparams, env, policy, run_kw)
    return driver.run(agent, config, key, hparams, **kw)


def _prepare(config: SHACConfig, key, hparams, env, policy, run_kw):
    """(agent, config, key, hparams) and the driver keywords (progress line, skip-rate health) of a run."""
    hparams = config.checked_hparams(hparams, check_hparams)
    agent = make_agent(config, env=env, policy=policy)
    run_kw.setdefault("describe", _describe(agent, config))
    return agent, config, key, hparams, dict(env=env, policy=policy, health=SkipHealth(config), **run_kw)


def train(config: SHACConfig, key: jax.Array, *, hparams: Optional[HParams] = None, env=None,
          policy: Optional[Policy] = None, **run_kw):
    """Train SHAC (or BPO): ``(make_policy, params, metrics)`` (the Brax convention).

    ``make_policy(params)`` is the jitted deterministic policy ``act(obs)`` (normalisation
    inside) that every evaluation used; ``params`` the final policy parameters and observation
    statistics; ``metrics`` as in ``run`` (which returns the whole train state instead).

        make_policy, params, metrics = shac.train(SHACConfig(), jax.random.key(0), run_dir="runs/a")
        act = make_policy(params); act(obs)
    """
    agent, config, key, hparams, kw = _prepare(config, key, hparams, env, policy, run_kw)
    return driver.train(agent, config, key, hparams, **kw)


def evaluate(config: SHACConfig, state: SHACState, key: jax.Array, *, env=None,
             policy: Optional[Policy] = None) -> float:
    """Mean undiscounted return of the deterministic policy over ``eval_envs`` fresh episodes."""
    agent = make_agent(config, env=env, policy=policy)
    return float(jax.jit(agent.evaluate)(state, config.hparams(), key))


__all__ = ["make_train_fn", "make_sweep_fn", "checkpoint_config", "SkipHealth", "run", "train", "evaluate"]
