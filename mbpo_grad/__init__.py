"""mbpo_grad: pathwise policy gradients by backpropagation through differentiable systems.

Core contract::

    J = mbpo_grad.pathwise_objective(policy, params, step, reward, states, *, horizon,
                                     gamma=1.0, bootstrap=None, policy_noise=None,
                                     dynamics_noise=None)

See README.md and docs/theory.md for the estimator family.
"""
from mbpo_grad.rollout import Trajectory, gate_gradient, transition_reward, unroll
from mbpo_grad.objectives import (
    actor_q_objective,
    batched_unroll,
    bpo,
    discounted_sum,
    dpmb,
    nstep,
    pathwise_objective,
    pathwise_returns,
    trajectory_return,
)
from mbpo_grad import returns
from mbpo_grad import nn
from mbpo_grad import policies
from mbpo_grad import bijectors, distributions, exploration, trust_region
from mbpo_grad import checkpoint, guards, score_function, tabular, linear_gaussian
from mbpo_grad.sweeps import initialize_distributed, sweep
from mbpo_grad import models, replay, svg
from mbpo_grad.runs import load_policy

__all__ = [
    "Trajectory", "gate_gradient", "transition_reward", "unroll",
    "actor_q_objective", "batched_unroll", "bpo", "discounted_sum", "dpmb", "nstep",
    "pathwise_objective", "pathwise_returns", "trajectory_return",
    "returns", "nn", "policies", "bijectors", "distributions", "exploration", "trust_region", "checkpoint", "guards", "sweep", "initialize_distributed", "score_function", "tabular", "linear_gaussian",
    "models", "replay", "svg", "load_policy",
]
__version__ = "0.1.0"
