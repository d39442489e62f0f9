"""PPO's networks: the stochastic actor, the state-value critic (the baseline), the evaluation policy.

    actor   π_θ(a|o): a = tanh(μ_θ(o) + σ_θ(o) ε), ε ~ N(0, I)   (``policies.gaussian``; any bundle
            with a density may replace it)
    critic  V_φ(o) = MLP_φ(o)                                   (``critics.v_critic``)
    act     a = tanh(μ_θ((o − m) / s))                          (the bundle's mode, ε = None)

o is the raw observation, m, s the running observation statistics (``normalizer``) when
``obs_norm`` is on. ``act(params, obs)`` takes ``params = {"policy", "obs_stats"}``
(``Agent.policy_params``): the form saved in a run folder and rebuilt by ``mg.load_policy``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from mbpo_grad import critics as C
from mbpo_grad.agents import common
from mbpo_grad.agents.ppo.config import PPOConfig
from mbpo_grad.policies.base import Policy
from mbpo_grad.policies.gaussian import gaussian


def default_policy(config: PPOConfig, obs_size: int, action_size: int) -> Policy:
    """The policy ``make_agent`` builds when none is given: a tanh-squashed Gaussian MLP
    (``policy_hidden``, state-dependent σ)."""
    return gaussian(obs_size, action_size, config.policy_hidden)


def value_critic(config: PPOConfig, obs_size: int):
    """V(o): an MLP with ``value_hidden`` on the normalised observation (``critics.v_critic``)."""
    return C.v_critic(obs_size, config.value_hidden)


def make_act(config: PPOConfig, policy: Policy):
    """The evaluation policy ``act(params, obs)``: the bundle's mode (ε = None) on the normalised obs."""
    return common.normalised_act(policy, config.obs_norm)


def make_act_for(config: PPOConfig, spec: Dict[str, Any], policy: Optional[Policy] = None):
    """``act(params, obs)`` of a saved run (``mg.load_policy``): ``policy`` or the default bundle."""
    if policy is None:
        policy = default_policy(config, int(spec["obs_size"]), int(spec["action_size"]))
    return make_act(config, policy)


__all__ = ["default_policy", "value_critic", "make_act", "make_act_for"]
