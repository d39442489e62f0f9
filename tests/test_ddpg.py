"""DDPG: the actor loss is the engine's n = 0 objective = the deterministic policy gradient; OU
exploration inside the agent; targets; learning pendulum swing-up."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo_grad import envs

import mbpo_grad as mg
from mbpo_grad import critics as C
from mbpo_grad import exploration as X
from mbpo_grad.agents import ddpg
from mbpo_grad.policies import as_engine_policy, deterministic


def test_actor_gradient_is_the_deterministic_policy_gradient():
    """∇_w mean_b Q(s_b, π_w(s_b)) = mean_b (∂π/∂w)ᵀ ∇_a Q(s_b, a)|_{a = π(s_b)}  (Silver et al. 2014), float64."""
    with jax.enable_x64(True):
        pol = deterministic(3, 2, (8,))
        critic = C.q_critic(3, 2, (8,))
        to64 = lambda t: jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), t)
        pp, cp = to64(pol.init(jax.random.PRNGKey(0))), to64(critic.init(jax.random.PRNGKey(1)))
        obs = jax.random.normal(jax.random.PRNGKey(2), (5, 3), jnp.float64)
        g = jax.jit(jax.grad(lambda p: -ddpg.dpg_actor_loss(pol, critic.apply, p, cp, obs)))(pp)

        def per_state(s):
            a = pol.sample(pp, s, None)
            dq_da = jax.grad(lambda a_: critic.apply(cp, s, a_))(a)
            jac = jax.jacobian(lambda p: pol.sample(p, s, None))(pp)       # leaves [act, *shape]
            return jax.tree_util.tree_map(lambda j: jnp.tensordot(dq_da, j, axes=1), jac)

        want = jax.tree_util.tree_map(lambda x: jnp.mean(x, 0), jax.jit(jax.vmap(per_state))(obs))
        for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)
        # and it is literally the engine's pathwise objective at horizon 0 with the critic as bootstrap
        j0 = mg.pathwise_objective(as_engine_policy(pol), pp, lambda s, a, xi: s, lambda s, a: 0.0 * s[0], obs,
                                   horizon=0, bootstrap=lambda s, a: critic.apply(cp, s, a))
        np.testing.assert_allclose(float(-ddpg.dpg_actor_loss(pol, critic.apply, pp, cp, obs)), float(j0), rtol=1e-12)


def test_q_targets_bootstrap_through_target_actor_and_discount():
    pol = deterministic(3, 1, (8,))
    critic = C.q_critic(3, 1, (8,))
    pp, cp = pol.init(jax.random.PRNGKey(0)), critic.init(jax.random.PRNGKey(1))
    batch = {"next_obs": jax.random.normal(jax.random.PRNGKey(2), (6, 3)), "reward": jnp.arange(6.0),
             "discount": jnp.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])}
    y = jax.jit(lambda b: ddpg.q_targets(pol, critic.apply, pp, cp, b, 0.9))(batch)
    # by hand: a' = π'(s'), Q'(s', a'), one transition at a time
    apply = jax.jit(lambda s2: critic.apply(cp, s2, pol.sample(pp, s2, None)))
    for b in range(6):
        q = float(apply(batch["next_obs"][b]))
        want = float(batch["reward"][b]) + 0.9 * float(batch["discount"][b]) * q
        assert float(y[b]) == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_exploration_is_ou_noise_around_the_policy_and_resets_per_episode():
    env = envs.make("pendulum")
    cfg = ddpg.DDPGConfig(actor_hidden=(8,), critic_hidden=(8,))
    algo = ddpg.make_algo(cfg, env)
    hp = cfg.hparams(ou_theta=0.3, ou_sigma=0.2, ou_dt=0.5, ou_mu=0.05)
    learner = algo.init(jax.random.PRNGKey(0), hp)
    obs = jax.random.normal(jax.random.PRNGKey(1), (4, 3)) * 0.1
    n0 = algo.explore_init(4)
    np.testing.assert_array_equal(np.asarray(n0), np.zeros((4, 1)))   # deviation N − μ = 0: chains start at μ
    dev_prev = jnp.array([[0.1], [-0.4], [0.9], [0.0]])                # N_t − μ
    key = jax.random.PRNGKey(7)
    a, dev1 = algo.act(learner, obs, dev_prev, key, hp)
    # N_{t+1} = N_t + θ(μ − N_t)Δt + σ√Δt ε on the noise itself
    n_next = X.ou_sample(dev_prev + 0.05, key, theta=0.3, mu=0.05, sigma=0.2, dt=0.5)
    np.testing.assert_allclose(np.asarray(dev1 + 0.05), np.asarray(n_next), rtol=1e-6, atol=1e-7)
    pi = jax.vmap(lambda o: algo.greedy(learner, o, hp))(obs)
    np.testing.assert_allclose(np.asarray(a), np.clip(np.asarray(pi + n_next), -1, 1), rtol=1e-6, atol=1e-6)
    reset = algo.explore_reset(dev1, jnp.array([True, False, True, False]))
    np.testing.assert_allclose(np.asarray(reset[:, 0]), [0.0, float(dev1[1, 0]), 0.0, float(dev1[3, 0])])


def test_bad_hparams_and_config():
    with pytest.raises(ValueError, match="ou_theta"):
        ddpg.train(ddpg.DDPGConfig(iterations=1), jax.random.key(0), hparams=ddpg.DDPGConfig().hparams(ou_theta=-1.0))
    with pytest.raises(ValueError, match="gamma"):
        ddpg.make_agent(ddpg.DDPGConfig(gamma=1.5))
    with pytest.raises(TypeError, match="hparams"):
        ddpg.train(ddpg.DDPGConfig(iterations=1), jax.random.key(0), hparams={"actor_lr": 1e-3})
    with pytest.raises(ValueError, match="env"):
        ddpg.make_agent(ddpg.DDPGConfig(env="nope"))
    with pytest.raises(ValueError, match="policy"):
        ddpg.make_agent(ddpg.DDPGConfig(), policy=deterministic(4, 1))


@pytest.mark.slow
def test_ddpg_learns_pendulum_swing_up():
    """Threshold −400 (random ≈ −1200, swing-up ≈ −150) after 10 000 env steps, seed 0."""
    cfg = ddpg.DDPGConfig(**LEARN)
    state, m = ddpg.run(cfg, jax.random.key(0), progress=False)
    assert m["eval_env_steps"][-1] == 10_000
    assert m["eval_return"][-1] >= -400, m["eval_return"]


LEARN = dict(env="pendulum", num_envs=8, iterations=1250, steps_per_iteration=1, updates_per_iteration=8,
             batch_size=128, warmup_steps=800, eval_every=1250, eval_envs=32, ou_sigma=0.2)
