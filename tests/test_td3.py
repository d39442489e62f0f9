"""TD3: the clipped double-Q target with clipped target-policy smoothing, delayed updates, learning."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo_grad import critics as C
from mbpo_grad.agents import td3
from mbpo_grad.policies import deterministic

OBS, ACT = 3, 2


def _fixed_networks():
    pol = deterministic(OBS, ACT, (16,))
    twin = C.twin_q(OBS, ACT, (16,))
    single = C.q_critic(OBS, ACT, (16,))
    pp = pol.init(jax.random.PRNGKey(1))
    # scale the output layer so π saturates near ±1 for some states (exercises the action clip)
    pp = jax.tree_util.tree_map(lambda x: 4.0 * x, pp)
    cp = twin.init(jax.random.PRNGKey(2))
    return pol, twin, single, pp, cp


def test_target_uses_twin_minimum_and_clipped_noise():
    pol, twin, single, pp, cp = _fixed_networks()
    B = 64
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    batch = {
        "next_obs": jax.random.normal(k[0], (B, OBS)),
        "reward": jax.random.normal(k[1], (B,)),
        "discount": (jax.random.uniform(k[2], (B,)) > 0.3).astype(jnp.float32),
    }
    eps = 3.0 * jax.random.normal(k[3], (B, ACT))   # wide, so the noise clip binds often
    gamma, sigma, c = 0.97, 0.4, 0.5
    targets = jax.jit(lambda clip: td3.td3_targets(pol, twin, pp, cp, batch, eps, gamma, sigma, clip))
    y = targets(c)

    # by hand in NumPy: each head with its own parameters
    s2, r, d, e = (np.asarray(x) for x in (batch["next_obs"], batch["reward"], batch["discount"], eps))
    a = np.asarray(jax.jit(jax.vmap(lambda o: pol.sample(pp, o, None)))(batch["next_obs"]))
    raw = sigma * e
    noise = np.clip(raw, -c, c)
    a_t = np.clip(a + noise, -1.0, 1.0)
    head = jax.jit(jax.vmap(single.apply, in_axes=(None, 0, 0)))
    q1, q2 = (np.asarray(head(jax.tree_util.tree_map(lambda x: x[i], cp), batch["next_obs"], a_t)) for i in (0, 1))
    want = r + gamma * d * np.minimum(q1, q2)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)
    # the test exercises every branch: both heads are the minimum somewhere, both clips bind
    assert np.any(q1 < q2) and np.any(q2 < q1)
    assert np.any(raw != noise) and np.any(a_t != a + noise)
    # and it can fail: unclipped noise or the mean of the heads give different targets
    y_unclipped = targets(1e6)
    assert np.max(np.abs(np.asarray(y_unclipped) - want)) > 1e-3


def test_smoothed_actions_stay_in_the_box():
    pol, _, _, pp, _ = _fixed_networks()
    obs = jax.random.normal(jax.random.PRNGKey(5), (256, OBS))
    eps = 10.0 * jax.random.normal(jax.random.PRNGKey(6), (256, ACT))
    a = td3.smoothed_target_actions(pol, pp, obs, eps, 1.0, 0.3)
    a0 = jax.vmap(lambda o: pol.sample(pp, o, None))(obs)
    assert float(jnp.max(jnp.abs(a))) <= 1.0
    assert float(jnp.max(jnp.abs(a - a0))) <= 0.3 + 1e-6


def test_delayed_actor_and_target_updates():
    """With policy_delay = 3, the actor and the targets change only on every third critic step."""
    cfg = td3.TD3Config(env="pendulum", num_envs=2, updates_per_iteration=1, batch_size=8, warmup_steps=0,
                        policy_delay=3, actor_hidden=(8,), critic_hidden=(8,), buffer_size=64)
    from mbpo_grad import envs

    env = envs.make("pendulum")
    algo = td3.make_algo(cfg, env)
    hp = cfg.hparams()
    learner = algo.init(jax.random.PRNGKey(0), hp)
    from mbpo_grad import replay
    from mbpo_grad.agents import offpolicy

    buf = replay.init(64, offpolicy.transition_example(env))
    k = jax.random.split(jax.random.PRNGKey(1), 3)
    buf = replay.add(buf, {"obs": jax.random.normal(k[0], (32, 3)), "action": jax.random.uniform(k[1], (32, 1), minval=-1),
                           "reward": -jnp.ones((32,)), "next_obs": jax.random.normal(k[2], (32, 3)),
                           "discount": jnp.ones((32,))})
    learn = jax.jit(algo.learn)
    changed = []
    for i in range(6):
        new, _ = learn(learner, buf, hp, jax.random.PRNGKey(10 + i))
        moved = lambda a, b: any(bool(jnp.any(x != y)) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                                          jax.tree_util.tree_leaves(b)))
        assert moved(new.critic, learner.critic)
        changed.append((moved(new.actor, learner.actor), moved(new.critic_target, learner.critic_target),
                        moved(new.actor_target, learner.actor_target)))
        learner = new
    assert changed == [(i % 3 == 2,) * 3 for i in range(6)]


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="policy_delay"):
        td3.make_agent(td3.TD3Config(policy_delay=0))
    with pytest.raises(ValueError, match="target_noise"):
        td3.make_agent(td3.TD3Config(target_noise=-1.0))
    with pytest.raises(ValueError, match="batch_size"):
        td3.make_agent(td3.TD3Config(batch_size=0))


@pytest.mark.slow
def test_td3_learns_pendulum_swing_up():
    """Threshold −400 (random ≈ −1200, swing-up ≈ −150) after 10 000 env steps, seed 0."""
    cfg = td3.TD3Config(**LEARN)
    state, m = td3.run(cfg, jax.random.key(0), progress=False)
    assert m["eval_env_steps"][-1] == 10_000
    assert m["eval_return"][-1] >= -400, m["eval_return"]


LEARN = dict(env="pendulum", num_envs=8, iterations=1250, steps_per_iteration=1, updates_per_iteration=8,
             batch_size=128, warmup_steps=800, eval_every=1250, eval_envs=32)
