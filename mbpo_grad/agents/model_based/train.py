"""Training the model-based agent: ``train`` (the Brax convention), ``run``, and the pure
``make_train_fn`` for ``jit`` / ``vmap`` / ``mg.sweep``.

Every run goes through ``offpolicy``'s entry points (``agents.driver``: blocks of ``eval_every``
jitted iterations, evaluations, ``progress_fn``, checkpoints and exact resume, the run folder);
the keywords ``model``, ``reward_fn``, ``done_fn`` are routed to ``make_agent``.
"""
from __future__ import annotations

import jax

from mbpo_grad.agents import common
from mbpo_grad.agents import offpolicy as OP
from mbpo_grad.agents.model_based.agent import make_agent
from mbpo_grad.agents.model_based.config import ModelBasedConfig, check_hparams


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


__all__ = ["make_train_fn", "run", "train"]
