"""Policy bundles: ``init`` / ``sample`` / ``infer_noise`` / ``log_prob`` / ``sample_and_log_prob`` (see ``base``)."""
from mbpo_grad.policies.base import Policy, as_engine_policy, sample_and_log_prob
from mbpo_grad.policies.deterministic import deterministic
from mbpo_grad.policies.gaussian import gaussian
from mbpo_grad.policies.flow import flow, flow_bijector
from mbpo_grad.policies.bounded import kumaraswamy_policy
from mbpo_grad.policies.categorical import gumbel_softmax_policy

__all__ = ["Policy", "as_engine_policy", "sample_and_log_prob", "deterministic", "gaussian", "flow", "flow_bijector",
           "kumaraswamy_policy", "gumbel_softmax_policy"]
