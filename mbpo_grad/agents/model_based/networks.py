"""The model-based agent's networks: the default policy, the value critic, the dynamics model,
and the evaluation policy.

    policy  a = π_w(o, ε)                      (tanh-Gaussian ``gaussian`` with ``actor_hidden`` by default;
                                               any ``Policy`` bundle may replace it)
    critic  V_φ(o) = MLP_φ(o)                  (``critics.v_critic``; also the Polyak target V')
    model   (o', r) = f̂(o, a, ξ)              (``models.gaussian_ensemble``: ``ensemble_size`` members,
                                               ``elites`` used in rollouts, its own standardisers)
    act     a = π_w((o − μ) / σ, ε = None)     (the bundle's mode on the normalised observation)

o is the observation ``env.observe(state)``; μ, σ the statistics of the stored observations
when ``obs_norm`` is on. ``act(params, obs)`` takes ``params = {"policy", "obs_stats"}``
(``Agent.policy_params``): the form saved in a run folder and rebuilt by ``mg.load_policy``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from mbpo_grad import critics as C
from mbpo_grad import validation as V
from mbpo_grad.agents import common
from mbpo_grad.agents import offpolicy as OP
from mbpo_grad.agents.model_based.config import ModelBasedConfig
from mbpo_grad.models.ensemble import GaussianEnsemble, gaussian_ensemble
from mbpo_grad.policies.base import Policy
from mbpo_grad.policies.gaussian import gaussian


def default_policy(config: ModelBasedConfig, obs_size: int, action_size: int) -> Policy:
    """The policy ``make_agent`` builds when none is given: the tanh-Gaussian with ``actor_hidden``."""
    return gaussian(obs_size, action_size, config.actor_hidden)


def _policy_for(env, config: ModelBasedConfig, policy: Optional[Policy]) -> Policy:
    """``policy`` (or the default) checked against the env; with ``entropy`` it needs a density."""
    policy = common.policy_for(env, policy, lambda: default_policy(config, env.obs_size, env.action_size))
    if config.entropy and tuple(policy.noise_shape) == (0,):
        raise ValueError("policy: entropy=True needs a stochastic policy with a density (gaussian, flow)")
    if config.svg == "replay" and tuple(policy.noise_shape) == (0,):
        raise ValueError("policy: svg='replay' infers the policy noise of stored actions and weights them by "
                         "π/μ: it needs a stochastic policy with infer_noise and a density (gaussian, flow)")
    if config.entropy or config.svg == "replay":  # log π enters rewards, targets or weights: trace its shapes
        V.check_policy(policy, env.obs_size, env.action_size, density=True)
    return policy


def value_critic(config: ModelBasedConfig, obs_size: int):
    """V(o): an MLP with ``critic_hidden`` on the normalised observation (``critics.v_critic``)."""
    return C.v_critic(obs_size, config.critic_hidden)


def default_model(config: ModelBasedConfig, obs_size: int, action_size: int) -> GaussianEnsemble:
    """The ensemble ``make_agent`` builds when none is given (sizes and fit settings from the config)."""
    return gaussian_ensemble(obs_size, action_size, config.ensemble_size, config.elites,
                             hidden=config.model_hidden, learning_rate=config.model_lr,
                             batch_size=config.model_batch, epochs=config.model_epochs)


def _model_for(env, config: ModelBasedConfig, model: Optional[GaussianEnsemble]) -> GaussianEnsemble:
    """``model`` (or the default ensemble) checked to be a ``GaussianEnsemble`` of the env's sizes."""
    if model is None:
        model = default_model(config, env.obs_size, env.action_size)
    if not isinstance(model, GaussianEnsemble):
        raise TypeError(f"model must be a mg.models.GaussianEnsemble bundle, got {type(model).__name__}")
    if model.obs_dim != env.obs_size or model.act_dim != env.action_size:
        raise ValueError(f"model: obs_dim/act_dim ({model.obs_dim}, {model.act_dim}) do not match the env "
                         f"({env.obs_size}, {env.action_size})")
    return model


def normalised_policy(config: ModelBasedConfig, policy: Policy):
    """(policy_params, eval_act): the policy's mode (ε = None) on the normalised observation."""
    def policy_params(l, hp):
        del hp
        return common.normalised_policy_params(l.policy, l.obs_stats)

    return policy_params, common.normalised_act(policy, config.obs_norm)


def make_act_for(config: ModelBasedConfig, spec: Dict[str, Any], policy: Optional[Policy] = None):
    """``act(params, obs)`` of a saved run (``mg.load_policy``): ``policy`` or the default Gaussian."""
    if policy is None:
        policy = default_policy(config, int(spec["obs_size"]), int(spec["action_size"]))
    return OP.float32_obs(normalised_policy(config, policy)[1])


__all__ = ["default_policy", "value_critic", "default_model", "normalised_policy", "make_act_for"]
