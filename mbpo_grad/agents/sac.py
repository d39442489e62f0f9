"""SAC: soft actor-critic (Haarnoja et al. 2018a, b) — SVG(0) with an entropy bonus (docs/theory.md §1, §5).

Actor: a reparameterised stochastic policy a = π_w(s, ε), ε ~ N(0, I) — the tanh-Gaussian
(``mg.policies.gaussian``, default) or any stochastic ``Policy`` bundle such as the flow
(``mg.policies.flow``). Per update, on a replay minibatch:

    soft target:  y = r + γ d ( min_i Q'_i(s', a') − α log π(a'|s') ),   a' = π(s', ε'),
    critic:       L_Q = Σ_i mean (Q_i(s, a) − y)²,
    actor:        minimise  E_{s, ε}[ α log π(π_w(s, ε)|s) − min_i Q_i(s, π_w(s, ε)) ]
                  = −J_0 with bootstrap Q_soft(s, a) = min_i Q_i(s, a) − α log π_w(a|s)
                  (``mg.actor_q_objective``: the engine's n = 0 objective, ``sac_actor_loss``;
                  per sample J_i = min_j Q_j(s_i, ã_i) − α log π(ã_i|s_i) is the agent's
                  ``actor_objective``, ``sac_objective``),
    temperature:  minimise  −log α · E[log π(a|s) + H̄]  (α = exp(log α); ``learn_alpha``),
    targets:      Q' ← polyak(Q', Q, τ).

As α → 0 (and σ → 0) the actor gradient is the deterministic policy gradient (DPG is the
β → 0 limit, docs/theory.md §5; tested). ``trust_region=True`` replaces the actor's Adam step by
a KL trust-region step (``mbpo_grad.trust_region``) on the same objective.
Evaluation acts with ε = None (the Gaussian's mode tanh(μ)).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from mbpo_grad import critics as C
from mbpo_grad import trust_region as TR
from mbpo_grad.agents import common
from mbpo_grad.agents import offpolicy as OP
from mbpo_grad.agents import hyperparams
from mbpo_grad.agents.hyperparams import traced
from mbpo_grad.policies.base import Policy, sample_and_log_prob
from mbpo_grad.policies.gaussian import gaussian
from mbpo_grad.svg import temperature_loss

PyTree = Any


@hyperparams.derive
@dataclasses.dataclass(frozen=True)
class SACConfig(OP.OffPolicyConfig):
    """``OffPolicyConfig`` + SAC switches + float hyper-parameter defaults.

    learn_alpha: learn the temperature (else α = init_alpha throughout).
    trust_region: actor steps by ``mbpo_grad.trust_region.step`` (KL radius ``kl_radius``).
    """

    learn_alpha: bool = True
    trust_region: bool = False
    actor_lr: float = traced(1e-3)
    critic_lr: float = traced(1e-3)
    alpha_lr: float = traced(1e-3)
    gamma: float = traced(0.99)
    tau: float = traced(0.005)
    init_alpha: float = traced(0.2)
    target_entropy: float = traced(-1.0)
    kl_radius: float = traced(0.01)


HParams = SACConfig.HPARAMS


class SACLearner(NamedTuple):
    actor: PyTree
    critic: PyTree           # twin Q
    critic_target: PyTree
    log_alpha: jax.Array
    actor_opt: PyTree
    critic_opt: PyTree
    alpha_opt: PyTree
    tr: TR.TrustRegionState


# --------------------------------------------------------------------------- losses (pure, reusable)
def soft_q_values(policy: Policy, q_fn: Callable, actor_params: PyTree, obs: jax.Array, eps: jax.Array,
                  alpha: Any) -> jax.Array:
    """J_i = Q(s_i, ã_i) − α log π(ã_i|s_i), ã_i = π(s_i, ε_i), shape [B]: ``OP.actor_q_values`` (n = 0).

    q_fn(obs, a) -> scalar (e.g. the twin minimum); obs [B, d]; eps [B, *noise_shape].
    The bootstrap of the engine's objective is the soft value Q(s, a) − α log π_w(a|s), so
    the gradient is the total (reparameterised) derivative through a and through log π_w.
    """
    def pi(params, o, e):  # the engine's "action" is (a, log π(a|s)), the density computed forward from ε
        return sample_and_log_prob(policy, params, o, e)

    def soft_q(o, action_and_lp):
        a, lp = action_and_lp
        return q_fn(o, a) - alpha * lp

    return OP.actor_q_values(pi, actor_params, soft_q, obs, policy_noise=eps)


def sac_actor_loss(policy: Policy, q_fn: Callable, actor_params: PyTree, obs: jax.Array, eps: jax.Array,
                   alpha: Any) -> jax.Array:
    """mean_b [α log π(a_b|s_b) − Q(s_b, a_b)], a_b = π(s_b, ε_b): −mean of ``soft_q_values`` (n = 0).

    q_fn(obs, a) -> scalar (e.g. the twin minimum); obs [B, d]; eps [B, *noise_shape]; the
    batch mean of the soft values is ``mg.actor_q_objective`` with the soft-value bootstrap.
    """
    return -jnp.mean(soft_q_values(policy, q_fn, actor_params, obs, eps, alpha))


def sac_objective(policy: Policy, twin: Any) -> Callable:
    """``actor_objective(actor_params, batch) -> J [M]``, J_i = min_j Q_j(s_i, ã_i) − α log π(ã_i|s_i),
    ã_i = π(s_i, ε_i), with the twin critic ``batch.critic``, ε_i = ``batch.policy_noise`` and
    α = ``batch.alpha`` (an ``OP.ReplayActorBatch``): ``soft_q_values`` on the twin minimum."""
    def actor_objective(actor_params: PyTree, batch: OP.ReplayActorBatch) -> jax.Array:
        def q_fn(o, a):
            return C.twin_min(twin, batch.critic, o, a)

        return soft_q_values(policy, q_fn, actor_params, batch.obs, batch.policy_noise, batch.alpha)

    return actor_objective


def soft_targets(policy: Policy, twin: Any, actor_params: PyTree, critic_target: PyTree,
                 batch: Dict[str, jax.Array], eps: jax.Array, alpha: Any, gamma: Any) -> jax.Array:
    """y = r + γ d (min_i Q'_i(s', a') − α log π(a'|s')), a' = π(s', ε'), eps [B, *noise_shape]."""
    nxt = batch["next_obs"]
    a_next, lp = jax.vmap(lambda o, e: sample_and_log_prob(policy, actor_params, o, e))(nxt, eps)
    q_next = jax.vmap(lambda o, a: C.twin_min(twin, critic_target, o, a))(nxt, a_next)
    return C.one_step_targets(batch["reward"], batch["discount"], gamma, q_next - alpha * lp)


# temperature_loss: the library's one temperature loss (in log α), re-exported from mbpo_grad.svg.


# --------------------------------------------------------------------------- the agent
def check_hparams(hp):
    OP.check_hparams(hp, unit=("gamma", "tau"), positive=("actor_lr", "critic_lr", "alpha_lr", "kl_radius"),
                     nonneg=("init_alpha",), finite=("target_entropy",))


def validate(config: SACConfig, env=None):
    env, episode_length = OP.validate(config, SACConfig, env)
    check_hparams(config)
    return env, episode_length


def _policy_for(env, config, policy):
    return common.policy_for(
        env, policy, lambda: default_policy(config, env.obs_size, env.action_size),
        density_error="policy: SAC needs a stochastic policy with a density (gaussian, flow), "
                      "got a deterministic one; use ddpg/td3 for deterministic policies")


def make_algo(config: SACConfig, env, policy: Optional[Policy] = None) -> OP.OffPolicyAlgo:
    policy = _policy_for(env, config, policy)
    twin = C.twin_q(env.obs_size, env.action_size, config.critic_hidden)
    U, bs = int(config.updates_per_iteration), int(config.batch_size)
    noise_shape = tuple(policy.noise_shape)
    act_dim = env.action_size

    adam = OP.adam()  # built once: each state holds its learning rate (set from hp in init)

    def init(key, hp):
        ka, kc = jax.random.split(key)
        ap, cp = policy.init(ka), twin.init(kc)
        la = jnp.log(jnp.maximum(hp.init_alpha, 1e-30)).astype(jnp.float32)
        return SACLearner(ap, cp, cp, la, OP.adam_init(adam, ap, hp.actor_lr), OP.adam_init(adam, cp, hp.critic_lr),
                          OP.adam_init(adam, la, hp.alpha_lr), TR.init(hp.kl_radius))

    def explore_init(n):
        return ()

    def act(learner, obs, carry, key, hp):
        eps = jax.random.normal(key, (obs.shape[0],) + noise_shape)
        return jax.vmap(policy.sample, in_axes=(None, 0, 0))(learner.actor, obs, eps), carry

    def explore_reset(carry, mask):
        return carry

    policy_params, eval_act = OP.actor_policy(policy)

    def alpha_of(l, hp):
        return jnp.exp(l.log_alpha) if config.learn_alpha else hp.init_alpha

    actor_objective = sac_objective(policy, twin)   # J_i = min_j Q_j(s_i, ã_i) − α log π(ã_i|s_i)

    def critic_step(l: SACLearner, batch, k_t, alpha, hp):
        """(critic, critic_opt, loss, soft targets y) after one Adam step on Σ_i mean (Q_i(s, a) − y)²."""
        y = soft_targets(policy, twin, l.actor, l.critic_target, batch,
                         jax.random.normal(k_t, (bs,) + noise_shape), alpha, hp.gamma)
        c_loss, g = jax.value_and_grad(lambda p: C.q_loss(twin, p, batch["obs"], batch["action"], y))(l.critic)
        upd, c_opt = adam.update(g, l.critic_opt, l.critic)
        return optax.apply_updates(l.critic, upd), c_opt, c_loss, y

    def make_actor_batch(obs, k_a, cp, alpha):
        """The actor step's batch: the minibatch's observations, fresh ε ~ N(0, I) from ``k_a``,
        the freshly stepped twin critic and the temperature α."""
        return OP.ReplayActorBatch(obs, jax.random.normal(k_a, (obs.shape[0],) + noise_shape), cp, alpha)

    def one_update(l: SACLearner, xs, hp):
        batch, key = xs
        k_t, k_a, k_kl = jax.random.split(key, 3)
        alpha = alpha_of(l, hp)
        cp, c_opt, c_loss, y = critic_step(l, batch, k_t, alpha, hp)
        ab = make_actor_batch(batch["obs"], k_a, cp, alpha)
        obs, eps = ab.obs, ab.policy_noise

        tr_metrics = {}
        if config.trust_region:
            def loss(p):
                return -jnp.mean(actor_objective(p, ab))

            old = l.actor
            a_loss = loss(old)
            # closed-form KL for the Gaussian, fresh samples (independent of the Fisher's) for flows
            ap, tr, info = TR.step(lambda p: -loss(p), TR.policy_kl(policy, old, obs, k_kl), old, l.tr)
            a_opt = l.actor_opt
            tr_metrics = {"tr_accepted": info.accepted.astype(jnp.float32), "tr_kl": info.kl,
                          "tr_radius": info.new_radius}
        else:
            ap, a_opt, a_loss = OP.actor_adam_step(actor_objective, adam, l.actor, l.actor_opt, ab)
            tr = l.tr

        la, al_opt = l.log_alpha, l.alpha_opt
        if config.learn_alpha:
            _, lp = jax.vmap(lambda o, e: sample_and_log_prob(policy, ap, o, e))(obs, eps)
            H = hp.target_entropy * act_dim
            g = jax.grad(temperature_loss)(l.log_alpha, lp, H)
            upd, al_opt = adam.update(g, l.alpha_opt, l.log_alpha)
            la = optax.apply_updates(l.log_alpha, upd)
        l = SACLearner(ap, cp, C.polyak(l.critic_target, cp, hp.tau), la, a_opt, c_opt, al_opt, tr)
        return l, {"critic_loss": c_loss, "actor_loss": a_loss, "alpha": alpha, "q_mean": jnp.mean(y),
                   **tr_metrics}

    def split_learn_key(buf, key, n):
        kb, kn = jax.random.split(key)
        return OP.sample_batches(buf, kb, n, bs), jax.random.split(kn, n)

    def learn(learner, buf, hp, key):
        batches, keys = split_learn_key(buf, key, U)
        learner, m = jax.lax.scan(lambda l, xs: one_update(l, xs, hp), learner, (batches, keys))
        return learner, jax.tree_util.tree_map(jnp.mean, m)

    def actor_batch(learner, buf, hp, key):
        """The batch of the first actor step of ``learn(learner, buf, hp, key)``: its first minibatch,
        ε and α (same key splits) and the critic after the critic step before it (with U = 0
        updates, learn takes no step: the batch one update would use)."""
        batches, keys = split_learn_key(buf, key, max(U, 1))
        batch = jax.tree_util.tree_map(lambda x: x[0], batches)
        k_t, k_a, _ = jax.random.split(keys[0], 3)
        alpha = alpha_of(learner, hp)
        return make_actor_batch(batch["obs"], k_a, critic_step(learner, batch, k_t, alpha, hp)[0], alpha)

    name = "sac" if policy.name == "gaussian" else f"sac-{policy.name}"
    return OP.OffPolicyAlgo(init, explore_init, act, explore_reset, learn, name, policy_params, eval_act,
                            actor_objective=actor_objective, actor_batch=actor_batch)


def default_policy(config: SACConfig, obs_size: int, action_size: int) -> Policy:
    """The policy used when none is given: gaussian tanh MLP with ``actor_hidden``."""
    return gaussian(obs_size, action_size, config.actor_hidden)


AGENT = OP.ActorAgent("sac", validate, make_algo, default_policy, check_hparams)
make_agent, make_train_fn, run, train, make_act_for = (AGENT.make_agent, AGENT.make_train_fn, AGENT.run, AGENT.train,
                                                       AGENT.make_act_for)


__all__ = ["SACConfig", "HParams", "SACLearner", "soft_q_values", "sac_actor_loss", "sac_objective", "soft_targets",
           "temperature_loss", "make_algo", "make_agent", "make_train_fn", "run", "train", "make_act_for",
           "default_policy", "AGENT", "validate"]
