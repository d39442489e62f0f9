"""TD3: twin delayed DDPG (Fujimoto, van Hoof & Meger 2018).

DDPG (``ddpg``) with three changes, each against over-estimation of Q:

* twin critics, the minimum in the target (clipped double Q):
      y = r + γ d min_{i=1,2} Q'_i(s', ã'),
* target-policy smoothing: ã' = clip(π'(s') + clip(σ̃ ε, −c, c), −1, 1), ε ~ N(0, I)
  (``target_noise`` = σ̃, ``target_noise_clip`` = c),
* delayed updates: the actor and the target networks move once every ``policy_delay``
  critic steps.

Actor: ascend J_0(w) = mean_s Q_1(s, π_w(s)) (``ddpg.dpg_objective`` with the first head,
the engine's n = 0 objective, as in the paper): the agent's ``actor_objective``, J_i = Q_1(s_i, π(s_i))
on an ``offpolicy.ReplayActorBatch`` holding the twin critic (``actor_batch``: the batch of ``learn``'s
first actor step). Exploration: a = clip(π(s) + σ ε, −1, 1),
uncorrelated Gaussian noise (``explore_noise`` = σ).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from mbpo_grad import critics as C
from mbpo_grad import exploration as X
from mbpo_grad.agents import offpolicy as OP
from mbpo_grad.agents import hyperparams
from mbpo_grad.agents.hyperparams import traced
from mbpo_grad.agents.ddpg import _policy_for, dpg_objective
from mbpo_grad.policies.base import Policy
from mbpo_grad.policies.deterministic import deterministic

PyTree = Any


@hyperparams.derive
@dataclasses.dataclass(frozen=True)
class TD3Config(OP.OffPolicyConfig):
    """``OffPolicyConfig`` + ``policy_delay`` (static) + float hyper-parameter defaults.

    ``updates_per_iteration`` counts critic steps; the actor and targets update on every
    ``policy_delay``-th one (the count runs across iterations).
    """

    policy_delay: int = 2
    actor_lr: float = traced(1e-3)
    critic_lr: float = traced(1e-3)
    gamma: float = traced(0.99)
    tau: float = traced(0.005)
    explore_noise: float = traced(0.1)
    target_noise: float = traced(0.2)
    target_noise_clip: float = traced(0.5)


HParams = TD3Config.HPARAMS


class TD3Learner(NamedTuple):
    actor: PyTree
    critic: PyTree           # twin: leaves with a leading axis 2
    actor_target: PyTree
    critic_target: PyTree
    actor_opt: PyTree
    critic_opt: PyTree
    step: jax.Array          # critic updates so far (int32)


def smoothed_target_actions(policy: Policy, actor_target: PyTree, next_obs: jax.Array, eps: jax.Array,
                            target_noise: Any, target_noise_clip: Any) -> jax.Array:
    """ã' = clip(π'(s') + clip(σ̃ ε, −c, c), −1, 1) for a batch: next_obs [B, d], eps [B, act_dim]."""
    a = jax.vmap(lambda o: policy.sample(actor_target, o, None))(next_obs)
    c = jnp.asarray(target_noise_clip, a.dtype)
    noise = jnp.clip(jnp.asarray(target_noise, a.dtype) * eps, -c, c)
    return jnp.clip(a + noise, -1.0, 1.0)


def td3_targets(policy: Policy, twin: Any, actor_target: PyTree, critic_target: PyTree,
                batch: Dict[str, jax.Array], eps: jax.Array, gamma: Any, target_noise: Any,
                target_noise_clip: Any) -> jax.Array:
    """y = r + γ d min_i Q'_i(s', ã') with the smoothed target actions ã' (``eps`` ~ N(0, I), [B, act_dim])."""
    a_next = smoothed_target_actions(policy, actor_target, batch["next_obs"], eps, target_noise, target_noise_clip)
    q_next = jax.vmap(lambda o, a: C.twin_min(twin, critic_target, o, a))(batch["next_obs"], a_next)
    return C.one_step_targets(batch["reward"], batch["discount"], gamma, q_next)


def first_head(twin_params: PyTree) -> PyTree:
    """The parameters of Q_1 in a ``twin_q`` parameter tree."""
    return jax.tree_util.tree_map(lambda x: x[0], twin_params)


def check_hparams(hp):
    OP.check_hparams(hp, unit=("gamma", "tau"), positive=("actor_lr", "critic_lr"),
                     nonneg=("explore_noise", "target_noise", "target_noise_clip"))


def validate(config: TD3Config, env=None):
    env, episode_length = OP.validate(config, TD3Config, env)
    OP.pos_int(config.policy_delay, "policy_delay")
    check_hparams(config)
    return env, episode_length


def make_algo(config: TD3Config, env, policy: Optional[Policy] = None) -> OP.OffPolicyAlgo:
    policy = _policy_for(env, config, policy)
    twin = C.twin_q(env.obs_size, env.action_size, config.critic_hidden)
    single = C.q_critic(env.obs_size, env.action_size, config.critic_hidden)
    U, bs, delay = int(config.updates_per_iteration), int(config.batch_size), int(config.policy_delay)
    act_dim = env.action_size

    adam = OP.adam()  # built once: each state holds its learning rate (set from hp in init)

    def init(key, hp):
        ka, kc = jax.random.split(key)
        ap, cp = policy.init(ka), twin.init(kc)
        return TD3Learner(ap, cp, ap, cp, OP.adam_init(adam, ap, hp.actor_lr), OP.adam_init(adam, cp, hp.critic_lr),
                          jnp.zeros((), jnp.int32))

    def explore_init(n):
        return ()

    def act(learner, obs, carry, key, hp):
        a = jax.vmap(lambda o: policy.sample(learner.actor, o, None))(obs)
        noise = X.gaussian_noise(key, a.shape, hp.explore_noise)
        return jnp.clip(a + noise, -1.0, 1.0), carry

    def explore_reset(carry, mask):
        return carry

    policy_params, eval_act = OP.actor_policy(policy)

    q1_objective = dpg_objective(policy, single.apply)

    def actor_objective(actor_params, batch: OP.ReplayActorBatch):
        """J_i = Q_1(s_i, π(s_i)): the first head of the twin ``batch.critic`` (``dpg_objective``)."""
        return q1_objective(actor_params, batch._replace(critic=first_head(batch.critic)))

    def critic_step(l: TD3Learner, batch, key, hp):
        """(critic, critic_opt, loss, targets y) after one Adam step on Σ_i mean (Q_i(s, a) − y)²."""
        eps = jax.random.normal(key, (bs, act_dim))
        y = td3_targets(policy, twin, l.actor_target, l.critic_target, batch, eps, hp.gamma, hp.target_noise,
                        hp.target_noise_clip)
        c_loss, g = jax.value_and_grad(lambda p: C.q_loss(twin, p, batch["obs"], batch["action"], y))(l.critic)
        upd, c_opt = adam.update(g, l.critic_opt, l.critic)
        return optax.apply_updates(l.critic, upd), c_opt, c_loss, y

    def make_actor_batch(obs, cp):
        """The actor step's batch: the minibatch's observations and the freshly stepped twin critic."""
        return OP.ReplayActorBatch(obs, None, cp)

    def one_update(l: TD3Learner, xs, hp):
        batch, key = xs
        cp, c_opt, c_loss, y = critic_step(l, batch, key, hp)
        step = l.step + 1

        def actor_and_targets(args):
            ap, a_opt, at, ct = args
            ap, a_opt, loss = OP.actor_adam_step(actor_objective, adam, ap, a_opt, make_actor_batch(batch["obs"], cp))
            return (ap, a_opt, C.polyak(at, ap, hp.tau), C.polyak(ct, cp, hp.tau)), loss

        def hold(args):
            return args, jnp.zeros((), jnp.float32)

        (ap, a_opt, at, ct), a_loss = jax.lax.cond(
            step % delay == 0, actor_and_targets, hold, (l.actor, l.actor_opt, l.actor_target, l.critic_target))
        l = TD3Learner(ap, cp, at, ct, a_opt, c_opt, step)
        return l, {"critic_loss": c_loss, "actor_loss": a_loss, "actor_updated": (step % delay == 0),
                   "q_mean": jnp.mean(y)}

    def split_learn_key(buf, key, n):
        kb, kn = jax.random.split(key)
        return OP.sample_batches(buf, kb, n, bs), jax.random.split(kn, n)

    def learn(learner, buf, hp, key):
        batches, keys = split_learn_key(buf, key, U)
        learner, m = jax.lax.scan(lambda l, xs: one_update(l, xs, hp), learner, (batches, keys))
        n_act = jnp.maximum(jnp.sum(m["actor_updated"]), 1)
        return learner, {"critic_loss": jnp.mean(m["critic_loss"]), "actor_loss": jnp.sum(m["actor_loss"]) / n_act,
                         "q_mean": jnp.mean(m["q_mean"])}

    def actor_batch(learner, buf, hp, key):
        """The batch of the first actor step of ``learn(learner, buf, hp, key)``: update j's minibatch
        and the critic after critic steps 0..j, j the first with (step + j + 1) % policy_delay = 0
        (before it the targets have not moved, so the critic steps are learn's). When learn takes
        no actor step (U < policy_delay), the batch of its last update, j = U − 1."""
        n = max(U, 1)
        batches, keys = split_learn_key(buf, key, n)

        def critic_only(l, xs):
            cp, c_opt, _, _ = critic_step(l, xs[0], xs[1], hp)
            return l._replace(critic=cp, critic_opt=c_opt), cp

        _, cps = jax.lax.scan(critic_only, learner, (batches, keys))
        acts = (learner.step + 1 + jnp.arange(n)) % delay == 0
        j = jnp.where(jnp.any(acts), jnp.argmax(acts), n - 1)
        return make_actor_batch(batches["obs"][j], jax.tree_util.tree_map(lambda x: x[j], cps))

    return OP.OffPolicyAlgo(init, explore_init, act, explore_reset, learn, "td3", policy_params, eval_act,
                            actor_objective=actor_objective, actor_batch=actor_batch)


def default_policy(config: TD3Config, obs_size: int, action_size: int) -> Policy:
    """The policy used when none is given: deterministic tanh MLP with ``actor_hidden``."""
    return deterministic(obs_size, action_size, config.actor_hidden)


AGENT = OP.ActorAgent("td3", validate, make_algo, default_policy, check_hparams)
make_agent, make_train_fn, run, train, make_act_for = (AGENT.make_agent, AGENT.make_train_fn, AGENT.run, AGENT.train,
                                                       AGENT.make_act_for)


__all__ = ["TD3Config", "HParams", "TD3Learner", "smoothed_target_actions", "td3_targets", "first_head",
           "make_algo", "make_agent", "make_train_fn", "run", "train", "make_act_for", "default_policy", "AGENT", "validate"]
