"""SHAC's networks: the default actor, the state-value critic, and the evaluation policy.

    actor   π_θ(o) = tanh(MLP_θ(o))            (``deterministic``; any ``Policy`` bundle may replace it;
                                               a tanh Gaussian for ``estimator="score"/"auto"``)
    critic  V_φ(o) = MLP_φ(o)                  (``critics.v_critic``; also the Polyak target V')
    act     a = π_θ((o − μ) / σ)               (the bundle's mode, ε = None, on the normalised obs)

o is the raw observation, μ, σ the running observation statistics (``normalizer``) when
``obs_norm`` is on. ``act(params, obs)`` takes ``params = {"policy", "obs_stats"}``
(``Agent.policy_params``): the form saved in a run folder and rebuilt by ``mg.load_policy``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from mbpo_grad import critics as C
from mbpo_grad.agents import common
from mbpo_grad.agents.shac.config import SCORE_ESTIMATORS, SHACConfig
from mbpo_grad.policies.base import Policy
from mbpo_grad.policies.deterministic import deterministic
from mbpo_grad.policies.gaussian import gaussian


def default_policy(config: SHACConfig, obs_size: int, action_size: int) -> Policy:
    """The policy ``make_agent`` builds when none is given: a deterministic tanh MLP (``actor_hidden``);
    for ``estimator="score"/"auto"`` (which need a density) a tanh Gaussian whose log σ is a free
    vector starting at 0 (σ = 1 before the squash)."""
    if config.estimator in SCORE_ESTIMATORS:
        return gaussian(obs_size, action_size, config.actor_hidden, state_dependent_std=False)
    return deterministic(obs_size, action_size, config.actor_hidden)


def value_critic(config: SHACConfig, obs_size: int):
    """V(o): an MLP with ``critic_hidden`` on the normalised observation (``critics.v_critic``)."""
    return C.v_critic(obs_size, config.critic_hidden)


def make_act(config: SHACConfig, policy: Policy):
    """The evaluation policy ``act(params, obs)``: the bundle's mode (ε = None) on the normalised obs.

    ``params`` = ``{"policy": ..., "obs_stats": {"count", "mean", "m2"}}`` (``Agent.policy_params``).
    """
    return common.normalised_act(policy, config.obs_norm)


def make_act_for(config: SHACConfig, spec: Dict[str, Any], policy: Optional[Policy] = None):
    """``act(params, obs)`` of a saved run (``mg.load_policy``): ``policy`` or the default bundle."""
    if policy is None:
        policy = default_policy(config, int(spec["obs_size"]), int(spec["action_size"]))
    return make_act(config, policy)


__all__ = ["default_policy", "value_critic", "make_act", "make_act_for"]
