"""Agents: each a pure ``train(config, key)`` built on the shared loop in ``common``
(collect → targets → critic step → actor step → log; see ``common.Agent``).

``shac``: the short-horizon actor-critic through a differentiable env (and BPO with
``use_critic=False``, ``horizon = episode_length``; see ``shac.bpo_config``). The other
agents in this folder (``ddpg``, ``td3``, ``sac``, ``nfqca``, ``model_based``, …) are imported
by name, e.g. ``from mbpo_grad.agents import td3``.
"""
from mbpo_grad.agents import common, shac
from mbpo_grad.agents import offpolicy, ddpg, td3, sac, nfqca, fqi, model_based, ppo
from mbpo_grad.agents.common import Agent

__all__ = ["Agent", "common", "shac", "offpolicy", "ddpg", "td3", "sac", "nfqca", "fqi", "model_based", "ppo"]
