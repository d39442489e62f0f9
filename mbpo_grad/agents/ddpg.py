"""DDPG: deep deterministic policy gradient (Lillicrap et al. 2016), the n = 0 family member with replay.

Per iteration (shared loop in ``offpolicy``): collect with the exploration policy
a = clip(π(s) + N_t, −1, 1), N_t Ornstein–Uhlenbeck noise (``mbpo_grad.exploration``; one
chain per env and action dimension, restarted at its mean μ when an episode ends), store in
the replay buffer, then
``updates_per_iteration`` times, on a fresh minibatch:

    critic:  y = r + γ d Q'(s', π'(s')),      L_Q = mean (Q(s, a) − y)²          (d = 1 − terminal)
    actor:   ascend  J_0(w) = mean_s Q(s, π_w(s))  = mg.actor_q_objective          (docs/theory.md §1, n = 0)
    targets: Q' ← polyak(Q', Q, τ),  π' ← polyak(π', π, τ)

The actor objective is the engine's n = 0 pathwise objective with the critic as bootstrap
(``dpg_objective``: per sample J_i = Q(s_i, π(s_i)); the actor step descends −mean_i J_i,
``dpg_actor_loss``), i.e. the deterministic policy gradient E[∇_a Q(s, a)|_{a=π(s)} ∇_w π(s)]
(Silver et al. 2014). It is the agent's ``actor_objective`` on an ``offpolicy.ReplayActorBatch``
(``actor_batch``: the batch of ``learn``'s first actor step). NFQCA uses the same actor loss on
a fixed batch (``nfqca``).

    cfg = DDPGConfig(iterations=2000)
    state, metrics = train(cfg, jax.random.key(0))
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from mbpo_grad import critics as C
from mbpo_grad import exploration as X
from mbpo_grad.agents import common
from mbpo_grad.agents import offpolicy as OP
from mbpo_grad.agents import hyperparams
from mbpo_grad.agents.hyperparams import traced
from mbpo_grad.policies.base import Policy, as_engine_policy
from mbpo_grad.policies.deterministic import deterministic

PyTree = Any


@hyperparams.derive
@dataclasses.dataclass(frozen=True)
class DDPGConfig(OP.OffPolicyConfig):
    """Static settings (``OffPolicyConfig``) + defaults of the float hyper-parameters."""

    actor_lr: float = traced(1e-3)
    critic_lr: float = traced(1e-3)
    gamma: float = traced(0.99)
    tau: float = traced(0.005)
    ou_theta: float = traced(0.15)
    ou_mu: float = traced(0.0)
    ou_sigma: float = traced(0.3)
    ou_dt: float = traced(1.0)


HParams = DDPGConfig.HPARAMS


class DDPGLearner(NamedTuple):
    actor: PyTree
    critic: PyTree
    actor_target: PyTree
    critic_target: PyTree
    actor_opt: PyTree
    critic_opt: PyTree


# --------------------------------------------------------------------------- losses (pure, reusable)
def dpg_objective(policy: Policy, critic_apply: Callable) -> Callable:
    """``actor_objective(actor_params, batch) -> J [M]``, J_i = Q(s_i, π(s_i, ε_i)) with Q = ``batch.critic``.

    The per-sample n = 0 pathwise objective with the critic as bootstrap (``OP.actor_q_values``;
    docs/theory.md §1): its batch mean is J_0 = ``mg.actor_q_objective``, its gradient the
    deterministic policy gradient. ``batch``: an ``OP.ReplayActorBatch`` (policy_noise None: the mode).
    """
    engine_policy = as_engine_policy(policy)

    def actor_objective(actor_params: PyTree, batch: OP.ReplayActorBatch) -> jax.Array:
        def q(o, a):
            return critic_apply(batch.critic, o, a)

        return OP.actor_q_values(engine_policy, actor_params, q, batch.obs, batch.policy_noise)

    return actor_objective


def dpg_actor_loss(policy: Policy, critic_apply: Callable, actor_params: PyTree, critic_params: PyTree,
                   obs: jax.Array, policy_noise: Optional[jax.Array] = None) -> jax.Array:
    """−J_0 = −mean_b Q(s_b, π(s_b, ε_b)): −mean of ``dpg_objective`` (n = 0, critic bootstrap).

    obs: [B, obs_dim]; policy_noise: None (deterministic policy / mode) or ε of shape
    [1, B, *noise_shape] (the engine's [horizon + 1, B] layout at horizon 0).
    """
    eps = None if policy_noise is None else policy_noise[0]
    batch = OP.ReplayActorBatch(obs, eps, critic_params)
    return -jnp.mean(dpg_objective(policy, critic_apply)(actor_params, batch))


def q_targets(policy: Policy, critic_apply: Callable, actor_target: PyTree, critic_target: PyTree,
              batch: Dict[str, jax.Array], gamma: Any) -> jax.Array:
    """y = r + γ d Q'(s', π'(s')) for a batch of transitions, shape [B]."""
    a_next = jax.vmap(lambda o: policy.sample(actor_target, o, None))(batch["next_obs"])
    q_next = jax.vmap(critic_apply, in_axes=(None, 0, 0))(critic_target, batch["next_obs"], a_next)
    return C.one_step_targets(batch["reward"], batch["discount"], gamma, q_next)


# --------------------------------------------------------------------------- the agent
def validate(config: DDPGConfig, env=None):
    env, episode_length = OP.validate(config, DDPGConfig, env)
    check_hparams(config)
    return env, episode_length


def check_hparams(hp):
    OP.check_hparams(hp, unit=("gamma", "tau"), positive=("actor_lr", "critic_lr", "ou_theta", "ou_dt"),
                     nonneg=("ou_sigma",), finite=("ou_mu",))


def _policy_for(env, config, policy):
    return common.policy_for(env, policy, lambda: default_policy(config, env.obs_size, env.action_size))


def make_algo(config: DDPGConfig, env, policy: Optional[Policy] = None) -> OP.OffPolicyAlgo:
    policy = _policy_for(env, config, policy)
    critic = C.q_critic(env.obs_size, env.action_size, config.critic_hidden)
    U, bs = int(config.updates_per_iteration), int(config.batch_size)

    adam = OP.adam()  # built once: each state holds its learning rate (set from hp in init)

    def init(key, hp):
        ka, kc = jax.random.split(key)
        ap, cp = policy.init(ka), critic.init(kc)
        return DDPGLearner(ap, cp, ap, cp, OP.adam_init(adam, ap, hp.actor_lr), OP.adam_init(adam, cp, hp.critic_lr))

    # The OU state is kept as the deviation X = N − μ (an OU chain with mean 0 and the same θ, σ, Δt),
    # so a fresh chain at its mean μ is X = 0 whatever μ is.
    def explore_init(n):
        return X.ou_init((n, env.action_size), 0.0)

    def act(learner, obs, dev, key, hp):
        dev = X.ou_sample(dev, key, theta=hp.ou_theta, mu=0.0, sigma=hp.ou_sigma, dt=hp.ou_dt)
        a = jax.vmap(lambda o: policy.sample(learner.actor, o, None))(obs)
        return jnp.clip(a + hp.ou_mu + dev, -1.0, 1.0), dev

    def explore_reset(dev, mask):
        # a fresh chain at its mean μ for every env that starts a new episode
        return jnp.where(mask[:, None], jnp.zeros_like(dev), dev)

    policy_params, eval_act = OP.actor_policy(policy)

    actor_objective = dpg_objective(policy, critic.apply)   # J_i = Q(s_i, π(s_i))

    def critic_step(l: DDPGLearner, batch, hp):
        """(critic, critic_opt, loss, targets y) after one Adam step on mean (Q(s, a) − y)²."""
        y = q_targets(policy, critic.apply, l.actor_target, l.critic_target, batch, hp.gamma)
        c_loss, g = jax.value_and_grad(lambda p: C.q_loss(critic, p, batch["obs"], batch["action"], y))(l.critic)
        upd, c_opt = adam.update(g, l.critic_opt, l.critic)
        return optax.apply_updates(l.critic, upd), c_opt, c_loss, y

    def make_actor_batch(obs, cp):
        """The actor step's batch: the minibatch's observations and the freshly stepped critic."""
        return OP.ReplayActorBatch(obs, None, cp)

    def one_update(l: DDPGLearner, batch, hp):
        cp, c_opt, c_loss, y = critic_step(l, batch, hp)
        ap, a_opt, a_loss = OP.actor_adam_step(actor_objective, adam, l.actor, l.actor_opt,
                                               make_actor_batch(batch["obs"], cp))
        l = DDPGLearner(ap, cp, C.polyak(l.actor_target, ap, hp.tau), C.polyak(l.critic_target, cp, hp.tau),
                        a_opt, c_opt)
        return l, {"critic_loss": c_loss, "actor_loss": a_loss, "q_mean": jnp.mean(y)}

    def learn(learner, buf, hp, key):
        batches = OP.sample_batches(buf, key, U, bs)
        learner, m = jax.lax.scan(lambda l, b: one_update(l, b, hp), learner, batches)
        return learner, jax.tree_util.tree_map(jnp.mean, m)

    def actor_batch(learner, buf, hp, key):
        """The batch of the first actor step of ``learn(learner, buf, hp, key)``: its first minibatch
        (same key) and the critic after the critic step before it (with U = 0 updates, learn takes
        no step: the batch one update would use)."""
        batch = jax.tree_util.tree_map(lambda x: x[0], OP.sample_batches(buf, key, max(U, 1), bs))
        return make_actor_batch(batch["obs"], critic_step(learner, batch, hp)[0])

    return OP.OffPolicyAlgo(init, explore_init, act, explore_reset, learn, "ddpg", policy_params, eval_act,
                            actor_objective=actor_objective, actor_batch=actor_batch)


def default_policy(config: DDPGConfig, obs_size: int, action_size: int) -> Policy:
    """The policy used when none is given: deterministic tanh MLP with ``actor_hidden``."""
    return deterministic(obs_size, action_size, config.actor_hidden)


AGENT = OP.ActorAgent("ddpg", validate, make_algo, default_policy, check_hparams)
make_agent, make_train_fn, run, train, make_act_for = (AGENT.make_agent, AGENT.make_train_fn, AGENT.run, AGENT.train,
                                                       AGENT.make_act_for)


__all__ = ["DDPGConfig", "HParams", "DDPGLearner", "dpg_objective", "dpg_actor_loss", "q_targets", "make_algo",
           "make_agent", "make_train_fn", "run", "train", "make_act_for", "default_policy", "AGENT", "validate"]
