"""NFQCA: neural fitted Q iteration with continuous actions (Hafner & Riedmiller 2011).

Batch-mode actor-critic: Q is FITTED on a fixed batch of transitions (the replay buffer's
contents, frozen for the iteration), with the Bellman targets of a frozen copy, and the
actor then maximises Q(s, π(s)) — the engine's n = 0 objective with the critic as
bootstrap (``mg.actor_q_objective``, docs/theory.md §1 "NFQCA / DDPG actor loss").

One iteration (``growing batch``: the episodes gathered so far are the batch):

1. collect ``steps_per_iteration`` steps per env with π + Gaussian exploration noise
   (uniform random actions during warm-up) into the buffer;
2. ``q_iterations`` times:
     freeze Q_k ← Q and π_k ← π;
     fit:   ``q_steps`` minibatch Adam steps on  mean (Q(s, a) − [r + γ d Q_k(s', π_k(s'))])²
            over the batch (targets from the frozen pair: fitted Q iteration, not TD);
     actor: ``actor_steps`` minibatch Adam steps ascending  mean_s Q(s, π(s))
            (the agent's ``actor_objective`` J_i = Q(s_i, π(s_i)), ``ddpg.dpg_objective``, on an
            ``offpolicy.ReplayActorBatch``; ``actor_batch``: the batch of ``learn``'s first actor step).

With ``steps_per_iteration`` large and ``iterations`` small this is the original
growing-batch NFQCA; ``collect_iterations = k`` stops collecting after k iterations
(pure batch RL on a fixed set of transitions from then on).
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from mbpo_grad import critics as C
from mbpo_grad import exploration as X
from mbpo_grad.agents import offpolicy as OP
from mbpo_grad.agents import hyperparams
from mbpo_grad.agents.hyperparams import traced
from mbpo_grad.agents.ddpg import _policy_for, dpg_objective, q_targets
from mbpo_grad.policies.base import Policy
from mbpo_grad.policies.deterministic import deterministic

PyTree = Any


@hyperparams.derive
@dataclasses.dataclass(frozen=True)
class NFQCAConfig(OP.OffPolicyConfig):
    """``OffPolicyConfig`` + the fitted-Q schedule.

    q_iterations: fitted-Q iterations (frozen target pairs) per iteration;
    q_steps, actor_steps: minibatch steps of the critic fit and of the actor per fitted-Q
    iteration (``updates_per_iteration`` is unused).
    """

    updates_per_iteration: int = 0
    q_iterations: int = 4
    q_steps: int = 50
    actor_steps: int = 50
    actor_lr: float = traced(1e-3)
    critic_lr: float = traced(1e-3)
    gamma: float = traced(0.99)
    explore_noise: float = traced(0.2)


HParams = NFQCAConfig.HPARAMS


class NFQCALearner(NamedTuple):
    actor: PyTree
    critic: PyTree
    actor_opt: PyTree
    critic_opt: PyTree


def check_hparams(hp):
    OP.check_hparams(hp, unit=("gamma",), positive=("actor_lr", "critic_lr"), nonneg=("explore_noise",))


def validate(config: NFQCAConfig, env=None):
    env, episode_length = OP.validate(config, NFQCAConfig, env)
    for name in ("q_iterations", "q_steps"):
        OP.pos_int(getattr(config, name), name)
    OP.pos_int(config.actor_steps, "actor_steps", minimum=0)
    check_hparams(config)
    return env, episode_length


def make_algo(config: NFQCAConfig, env, policy: Optional[Policy] = None) -> OP.OffPolicyAlgo:
    policy = _policy_for(env, config, policy)
    critic = C.q_critic(env.obs_size, env.action_size, config.critic_hidden)
    bs, K = int(config.batch_size), int(config.q_iterations)
    n_q, n_a = int(config.q_steps), int(config.actor_steps)

    adam = OP.adam()  # built once: each state holds its learning rate (set from hp in init)

    def init(key, hp):
        ka, kc = jax.random.split(key)
        ap, cp = policy.init(ka), critic.init(kc)
        return NFQCALearner(ap, cp, OP.adam_init(adam, ap, hp.actor_lr), OP.adam_init(adam, cp, hp.critic_lr))

    def explore_init(n):
        return ()

    def act(learner, obs, carry, key, hp):
        a = jax.vmap(lambda o: policy.sample(learner.actor, o, None))(obs)
        return jnp.clip(a + X.gaussian_noise(key, a.shape, hp.explore_noise), -1.0, 1.0), carry

    def explore_reset(carry, mask):
        return carry

    policy_params, eval_act = OP.actor_policy(policy)

    actor_objective = dpg_objective(policy, critic.apply)   # J_i = Q(s_i, π(s_i))

    def fit_q(l: NFQCALearner, k_q, buf, hp):
        """(critic, critic_opt, losses [q_steps]): the fit of Q to the targets of the frozen pair (Q_k, π_k)."""
        frozen_actor, frozen_critic = l.actor, l.critic   # Q_k, π_k: the targets of this fit

        def q_step(carry, batch):
            cp, c_opt = carry
            y = q_targets(policy, critic.apply, frozen_actor, frozen_critic, batch, hp.gamma)
            loss, g = jax.value_and_grad(lambda p: C.q_loss(critic, p, batch["obs"], batch["action"], y))(cp)
            upd, c_opt = adam.update(g, c_opt, cp)
            return (optax.apply_updates(cp, upd), c_opt), loss

        (cp, c_opt), q_losses = jax.lax.scan(q_step, (l.critic, l.critic_opt), OP.sample_batches(buf, k_q, n_q, bs))
        return cp, c_opt, q_losses

    def make_actor_batch(obs, cp):
        """An actor step's batch: the minibatch's observations and the fitted critic."""
        return OP.ReplayActorBatch(obs, None, cp)

    def fitted_q_iteration(l: NFQCALearner, key, buf, hp):
        k_q, k_a = jax.random.split(key)
        cp, c_opt, q_losses = fit_q(l, k_q, buf, hp)

        def a_step(carry, batch):
            ap, a_opt = carry
            ap, a_opt, loss = OP.actor_adam_step(actor_objective, adam, ap, a_opt, make_actor_batch(batch["obs"], cp))
            return (ap, a_opt), loss

        ap, a_opt, a_loss = l.actor, l.actor_opt, jnp.zeros(())
        if n_a:
            (ap, a_opt), a_losses = jax.lax.scan(a_step, (ap, a_opt), OP.sample_batches(buf, k_a, n_a, bs))
            a_loss = jnp.mean(a_losses)
        return NFQCALearner(ap, cp, a_opt, c_opt), {"critic_loss": jnp.mean(q_losses), "actor_loss": a_loss}

    def learn(learner, buf, hp, key):
        learner, m = jax.lax.scan(lambda l, k: fitted_q_iteration(l, k, buf, hp), learner, jax.random.split(key, K))
        return learner, {"critic_loss": m["critic_loss"][-1], "actor_loss": m["actor_loss"][-1]}

    def actor_batch(learner, buf, hp, key):
        """The batch of the first actor step of ``learn(learner, buf, hp, key)``: the first fitted-Q
        iteration's first actor minibatch (same key splits) and the critic fitted before it (with
        ``actor_steps = 0`` learn takes no actor step: one minibatch drawn with the actor key)."""
        k_q, k_a = jax.random.split(jax.random.split(key, K)[0])
        cp = fit_q(learner, k_q, buf, hp)[0]
        batch = jax.tree_util.tree_map(lambda x: x[0], OP.sample_batches(buf, k_a, max(n_a, 1), bs))
        return make_actor_batch(batch["obs"], cp)

    return OP.OffPolicyAlgo(init, explore_init, act, explore_reset, learn, "nfqca", policy_params, eval_act,
                            actor_objective=actor_objective, actor_batch=actor_batch)


def default_policy(config: NFQCAConfig, obs_size: int, action_size: int) -> Policy:
    """The policy used when none is given: deterministic tanh MLP with ``actor_hidden``."""
    return deterministic(obs_size, action_size, config.actor_hidden)


AGENT = OP.ActorAgent("nfqca", validate, make_algo, default_policy, check_hparams)
make_agent, make_train_fn, run, train, make_act_for = (AGENT.make_agent, AGENT.make_train_fn, AGENT.run, AGENT.train,
                                                       AGENT.make_act_for)


__all__ = ["NFQCAConfig", "HParams", "NFQCALearner", "make_algo", "make_agent", "make_train_fn", "run", "train",
           "make_act_for", "default_policy", "AGENT", "validate"]
