"""Policy bundles: ``init`` / ``sample`` / ``infer_noise`` / ``log_prob`` (see ``base``)."""
from mbpo_grad.policies.base import Policy, as_engine_policy
from mbpo_grad.policies.deterministic import deterministic

__all__ = ["Policy", "as_engine_policy", "deterministic"]
