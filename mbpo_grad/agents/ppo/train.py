"""Training PPO / REINFORCE: ``train`` (the Brax convention), ``run``, and the pure
``make_train_fn`` / ``make_sweep_fn`` for ``jit`` / ``vmap`` / ``mg.sweep``.

Every run goes through ``agents.driver`` (blocks of ``eval_every`` jitted iterations,
evaluations, ``progress_fn``, checkpoints and exact resume, the run folder); this file adds
PPO's progress line.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import jax

from mbpo_grad.agents import common, driver, loop
from mbpo_grad.agents.common import Agent
from mbpo_grad.agents.ppo.agent import PPOState, make_agent
from mbpo_grad.agents.ppo.config import HParams, PPOConfig, check_hparams
from mbpo_grad.policies.base import Policy


def make_train_fn(config: PPOConfig, *, env=None, policy: Optional[Policy] = None):
    """A pure ``train_fn(key, hparams) -> (state, metrics, eval_returns)`` for jit / vmap / sweeps."""
    agent = make_agent(config, env=env, policy=policy)
    return common.make_train_fn(agent, config.iterations, config.eval_every)


def make_sweep_fn(config: PPOConfig, *, env=None, policy: Optional[Policy] = None):
    """``fn(key, hp) -> {"eval_return", "eval_env_steps", "final_return"}`` for ``mg.sweep``.

    ``hp`` maps any subset of the ``HParams`` names to traced scalars; the others come from
    ``config``. Example: ``mg.sweep(make_sweep_fn(cfg), seeds=4, hparams={"clip_eps": [0.1, 0.3]})``.
    """
    train_fn = make_train_fn(config, env=env, policy=policy)
    return loop.make_sweep_fn(train_fn, config.hparams(), config.iterations, config.eval_every)


def _describe(agent: Agent, config: PPOConfig):
    def describe(it, last, ev):
        return loop.progress_line(agent.name, it, config.iterations, last, ev,
                                  f"kl {last['approx_kl']:8.2g}  clip_frac {last['clip_fraction']:5.2f}  "
                                  f"entropy {last['entropy']:7.3f}  skipped {int(last['total_skipped'])}")

    return describe


def _prepare(config: PPOConfig, key, hparams, env, policy, run_kw):
    hparams = config.checked_hparams(hparams, check_hparams)
    agent = make_agent(config, env=env, policy=policy)
    run_kw.setdefault("describe", _describe(agent, config))
    return agent, hparams, dict(env=env, policy=policy, **run_kw)


def run(config: PPOConfig, key: jax.Array, *, hparams: Optional[HParams] = None, env=None,
        policy: Optional[Policy] = None, **run_kw) -> Tuple[PPOState, Dict[str, Any]]:
    """Train PPO and return (final ``PPOState``, metrics); ``train`` without the policy step.

    metrics: per-iteration NumPy arrays (``env_steps``, ``episode_return`` — the mean return of
    each env's last finished training episode, NaN before any finished — ``reward_per_step``,
    ``loss``, ``policy_loss``, ``value_loss``, ``entropy`` (last epoch's means), ``approx_kl``,
    ``clip_fraction`` (last minibatch), ``grad_norm``, ``skipped_updates`` (minibatch steps
    skipped this iteration), ``total_skipped``, ``bad_steps`` (non-finite transitions)), plus
    the evaluations (deterministic policy, ``eval_envs`` fresh resets, full episodes) every
    ``eval_every`` iterations and at the end: ``eval_iteration``, ``eval_env_steps``,
    ``eval_return``; and ``wall_s``.

    ``run_kw`` go to ``driver.run``: ``progress``, ``stream``, ``progress_fn(step, metrics)``,
    ``checkpoint_dir`` / ``checkpoint_every`` / ``resume`` / ``keep_checkpoints``, ``run_dir``,
    ``tensorboard``, ``info``, ``devices``.
    """
    agent, hparams, kw = _prepare(config, key, hparams, env, policy, run_kw)
    return driver.run(agent, config, key, hparams, **kw)


def train(config: PPOConfig, key: jax.Array, *, hparams: Optional[HParams] = None, env=None,
          policy: Optional[Policy] = None, **run_kw):
    """Train PPO: ``(make_policy, params, metrics)`` (the Brax convention).

        make_policy, params, metrics = ppo.train(PPOConfig(), jax.random.key(0), run_dir="runs/p")
        act = make_policy(params); act(obs)
    """
    agent, hparams, kw = _prepare(config, key, hparams, env, policy, run_kw)
    return driver.train(agent, config, key, hparams, **kw)


def evaluate(config: PPOConfig, state: PPOState, key: jax.Array, *, env=None,
             policy: Optional[Policy] = None) -> float:
    """Mean undiscounted return of the deterministic policy over ``eval_envs`` fresh episodes."""
    agent = make_agent(config, env=env, policy=policy)
    return float(jax.jit(agent.evaluate)(state, config.hparams(), key))


__all__ = ["make_train_fn", "make_sweep_fn", "run", "train", "evaluate"]
