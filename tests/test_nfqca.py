"""NFQCA: Q fitted on a fixed batch with frozen-copy targets, actor maximising Q(s, π(s)); learning."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mbpo_grad import envs

from mbpo_grad import critics as C
from mbpo_grad import replay
from mbpo_grad.agents import ddpg, nfqca, offpolicy
from mbpo_grad.agents.common import make_train_fn


def _fixed_batch(env, n=64):
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    buf = replay.init(n, offpolicy.transition_example(env))
    return replay.add(buf, {
        "obs": jax.random.normal(k[0], (n, env.obs_size)),
        "action": jax.random.uniform(k[1], (n, env.action_size), minval=-1.0, maxval=1.0),
        "reward": jax.random.normal(k[2], (n,)), "next_obs": jax.random.normal(k[3], (n, env.obs_size)),
        "discount": (jnp.arange(n) % 5 != 0) * 1.0})


def test_one_fitted_q_iteration_regresses_on_frozen_targets_then_ascends_q():
    """q_iterations = 1: the critic steps match Adam on mean (Q − y_k)² with y_k from the frozen
    (Q_k, π_k); the actor steps then match Adam on −mean Q_{k+1}(s, π(s)) (the DPG loss)."""
    env = envs.make("pendulum")
    cfg = nfqca.NFQCAConfig(q_iterations=1, q_steps=3, actor_steps=2, batch_size=16, actor_hidden=(8,),
                            critic_hidden=(8,))
    algo = nfqca.make_algo(cfg, env)
    hp = cfg.hparams()
    learner = algo.init(jax.random.PRNGKey(0), hp)
    buf = _fixed_batch(env)
    key = jax.random.PRNGKey(3)
    new, _ = jax.jit(algo.learn)(learner, buf, hp, key)

    # the same computation written out: the minibatches the learner drew from the same keys
    (k_fit,) = jax.random.split(key, 1)
    k_q, k_a = jax.random.split(k_fit)
    qb = offpolicy.sample_batches(buf, k_q, 3, 16)
    ab = offpolicy.sample_batches(buf, k_a, 2, 16)
    pol = ddpg._policy_for(env, cfg, None)
    critic = C.q_critic(env.obs_size, env.action_size, (8,))
    opt = optax.adam(1e-3)

    @jax.jit
    def reference(learner, qb, ab):
        def q_step(carry, b):   # targets from the frozen Q_k, π_k = the learner before the fit
            cp, c_state = carry
            y = ddpg.q_targets(pol, critic.apply, learner.actor, learner.critic, b, hp.gamma)
            g = jax.grad(lambda p: C.q_loss(critic, p, b["obs"], b["action"], y))(cp)
            u, c_state = opt.update(g, c_state, cp)
            return (optax.apply_updates(cp, u), c_state), None

        (cp, _), _ = jax.lax.scan(q_step, (learner.critic, opt.init(learner.critic)), qb)

        def a_step(carry, b):
            ap, a_state = carry
            g = jax.grad(lambda p: ddpg.dpg_actor_loss(pol, critic.apply, p, cp, b["obs"]))(ap)
            u, a_state = opt.update(g, a_state, ap)
            return (optax.apply_updates(ap, u), a_state), None

        (ap, _), _ = jax.lax.scan(a_step, (learner.actor, opt.init(learner.actor)), ab)
        return cp, ap

    cp, ap = reference(learner, qb, ab)
    for got, want in ((new.critic, cp), (new.actor, ap)):
        for x, y_ in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y_), rtol=2e-5, atol=2e-6)


def test_fixed_batch_mode_stops_interacting():
    """collect_iterations = 1: the batch is gathered once; later iterations only fit."""
    cfg = nfqca.NFQCAConfig(num_envs=4, steps_per_iteration=25, collect_iterations=1, warmup_steps=100,
                            batch_size=16, q_iterations=1, q_steps=2, actor_steps=1, actor_hidden=(8,),
                            critic_hidden=(8,), iterations=4, eval_every=4, eval_envs=2)
    agent = nfqca.make_agent(cfg)
    state, metrics, _ = jax.jit(make_train_fn(agent, 4, 4))(jax.random.key(0), cfg.hparams())
    np.testing.assert_array_equal(np.asarray(metrics["env_steps"]), [100, 100, 100, 100])
    assert int(state.buffer.size) == 100
    assert np.all(np.asarray(metrics["critic_loss"]) > 0)   # learning ran on the fixed batch every iteration


@pytest.mark.slow
def test_nfqca_learns_pendulum_swing_up():
    """Growing batch: threshold −400 (random ≈ −1200, swing-up ≈ −150) after 10 000 env steps, seed 0."""
    cfg = nfqca.NFQCAConfig(env="pendulum", num_envs=8, iterations=625, steps_per_iteration=2, q_iterations=1,
                            q_steps=16, actor_steps=16, batch_size=128, warmup_steps=800, eval_every=625,
                            eval_envs=32)
    state, m = nfqca.run(cfg, jax.random.key(0), progress=False)
    assert m["eval_env_steps"][-1] == 10_000
    assert m["eval_return"][-1] >= -400, m["eval_return"]
