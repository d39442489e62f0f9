"""Fitted Q iteration with embedded optimisation (projected gradient ascent over actions), the
amortised version (a policy fitted to the maximisers over a sliding window), and learning."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo_grad import envs

from mbpo_grad import replay
from mbpo_grad.agents import fqi, offpolicy


def test_maximize_q_interior_and_boundary_maxima():
    a_star = jnp.array([0.3, -0.6])
    q = lambda a: -jnp.sum((a - a_star) ** 2) * 50.0     # scale does not matter (normalised steps)
    starts = jnp.array([[-1.0, 1.0], [0.9, 0.9], [0.0, -1.0]])
    steps, eta, decay = 20, 0.5, 0.7
    a, v = fqi.maximize_q(q, starts, steps=steps, step_size=eta, decay=decay)
    # normalised steps of length η·decay^k: the last iterate is within the last step length of a*
    assert float(jnp.linalg.norm(a - a_star)) <= eta * decay ** (steps - 1) * 2
    assert float(v) == pytest.approx(float(q(a)))
    # a maximiser outside the box: the projection lands on the boundary point (1, −0.6)
    q_out = lambda a: -jnp.sum((a - jnp.array([1.7, -0.6])) ** 2)
    a, _ = fqi.maximize_q(q_out, starts, steps=steps, step_size=eta, decay=decay)
    np.testing.assert_allclose(np.asarray(a), [1.0, -0.6], atol=1e-3)


def test_maximize_q_multimodal_finds_the_global_maximum_from_several_starts():
    q = lambda a: jnp.sin(7.0 * a[0]) + 0.3 * a[0]            # several local maxima on [−1, 1]
    grid = jnp.linspace(-1, 1, 20001)[:, None]
    best = float(jnp.max(jax.vmap(q)(grid)))
    starts = jnp.linspace(-1, 1, 6)[:, None]
    a, v = fqi.maximize_q(q, starts, steps=25, step_size=0.3, decay=0.8)
    assert float(v) == pytest.approx(best, abs=1e-4)
    # from one bad start it finds only the local maximum — several starts are needed
    a1, v1 = fqi.maximize_q(q, jnp.array([[-1.0]]), steps=25, step_size=0.3, decay=0.8)
    assert float(v1) < best - 0.2   # the local maximum at a = (π/2 − 2π)/7: sin = 1, value 0.80


def test_maximize_q_is_never_worse_than_the_best_start():
    rng = np.random.default_rng(0)
    for _ in range(10):
        w = jnp.asarray(rng.normal(size=(3, 2)))
        q = lambda a, w=w: jnp.sum(jnp.sin(w @ a))
        starts = jnp.asarray(rng.uniform(-1, 1, size=(4, 2)))
        a, v = fqi.maximize_q(q, starts, steps=3, step_size=2.0, decay=1.0)   # deliberately wild steps
        assert float(v) >= float(jnp.max(jax.vmap(q)(starts))) - 1e-6
        assert float(jnp.max(jnp.abs(a))) <= 1.0


def test_fqi_targets_use_the_embedded_maximum():
    """q(s, a) = s₁ − (a − tanh s₀)²: max_a q = s₁ at a = tanh s₀, so y = r + γ d s₁."""
    q = lambda s, a: s[1] - 4.0 * jnp.sum((a - jnp.tanh(s[0])) ** 2)
    B = 32
    s2 = jax.random.normal(jax.random.PRNGKey(0), (B, 2))
    batch = {"next_obs": s2, "reward": jnp.linspace(-1, 0, B), "discount": (jnp.arange(B) % 4 != 0) * 1.0}
    starts = jax.random.uniform(jax.random.PRNGKey(1), (B, 3, 1), minval=-1, maxval=1)
    y, a_star = fqi.fqi_targets(q, batch, starts, 0.9, steps=20, step_size=0.5, decay=0.8)
    # the last step length is 0.5·0.8¹⁹ ≈ 0.007: a* within it, q within 4·0.007²
    np.testing.assert_allclose(np.asarray(a_star[:, 0]), np.tanh(np.asarray(s2[:, 0])), atol=8e-3)
    want = np.asarray(batch["reward"]) + 0.9 * np.asarray(batch["discount"]) * np.asarray(s2[:, 1])
    np.testing.assert_allclose(np.asarray(y), want, atol=3e-4)
    assert np.all(np.asarray(y) <= want + 1e-6)   # a max over actions never exceeds the true max


def _buffer(env, n=256):
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    buf = replay.init(n, offpolicy.transition_example(env))
    return replay.add(buf, {
        "obs": jax.random.normal(k[0], (n, env.obs_size)),
        "action": jax.random.uniform(k[1], (n, env.action_size), minval=-1.0, maxval=1.0),
        "reward": jax.random.normal(k[2], (n,)), "next_obs": jax.random.normal(k[3], (n, env.obs_size)),
        "discount": jnp.ones((n,))})


def test_amortised_policy_regresses_on_a_sliding_window_of_maximisers():
    env = envs.make("pendulum")
    cfg = fqi.FQIConfig(amortized=True, window=3, q_iterations=2, q_steps=2, policy_steps=20, batch_size=16,
                        inner_steps=4, actor_hidden=(16,), critic_hidden=(16,))
    algo = fqi.make_algo(cfg, env)
    hp = cfg.hparams(policy_lr=1e-2)
    learner = algo.init(jax.random.PRNGKey(0), hp)
    learn = jax.jit(algo.learn)
    buf = _buffer(env)
    sizes, p_losses = [], []
    for i in range(3):
        learner, m = learn(learner, buf, hp, jax.random.PRNGKey(i))
        sizes.append(int(learner.window.size))
        p_losses.append(float(m["policy_loss"]))
    # each fitted-Q iteration adds one batch of (s', a*) pairs; the window keeps the last 3 fits
    assert sizes == [2 * 16, 3 * 16, 3 * 16]
    # the stored pairs are maximisers: the window's actions lie in the box and the policy fits them
    acts = np.asarray(learner.window.data["action"])
    assert np.all(np.abs(acts) <= 1.0)
    assert p_losses[-1] < p_losses[0]
    # acting / evaluation use the amortised policy
    obs = jnp.array([1.0, 0.0, 0.3])
    a = algo.greedy(learner, obs, hp)
    assert a.shape == (1,) and float(jnp.abs(a)[0]) <= 1.0


def test_bad_config():
    with pytest.raises(ValueError, match="inner_starts"):
        fqi.make_agent(fqi.FQIConfig(inner_starts=0))
    with pytest.raises(ValueError, match="inner_decay"):
        fqi.make_agent(fqi.FQIConfig(inner_decay=1.5))
    with pytest.raises(ValueError, match="steps"):
        fqi.maximize_q(lambda a: -jnp.sum(a**2), jnp.zeros((2, 1)), steps=-1)
    with pytest.raises(ValueError, match="starts"):
        fqi.maximize_q(lambda a: -jnp.sum(a**2), jnp.zeros((2,)), steps=1)


@pytest.mark.slow
@pytest.mark.heavy  # a learning run (13–45 s): opt-in, MBPO_GRAD_HEAVY=1, to keep the suite under 15 min
def test_fqi_learns_pendulum_swing_up():
    """Embedded optimisation: threshold −400 (random ≈ −1200, swing-up ≈ −150) after 12 000 env steps, seed 0."""
    cfg = fqi.FQIConfig(**LEARN)
    state, m = fqi.run(cfg, jax.random.key(0), progress=False)
    assert m["eval_env_steps"][-1] == 12_000
    assert m["eval_return"][-1] >= -400, m["eval_return"]


@pytest.mark.slow
@pytest.mark.heavy  # a learning run (13–45 s): opt-in, MBPO_GRAD_HEAVY=1, to keep the suite under 15 min
def test_amortised_fqi_learns_pendulum_swing_up():
    """Amortised: threshold −400 after 12 000 env steps, seed 0."""
    cfg = fqi.FQIConfig(**LEARN, amortized=True, inner_starts=2, inner_steps=4, policy_steps=8)
    state, m = fqi.run(cfg, jax.random.key(0), progress=False)
    assert m["eval_env_steps"][-1] == 12_000
    assert m["eval_return"][-1] >= -400, m["eval_return"]


LEARN = dict(env="pendulum", num_envs=8, iterations=750, steps_per_iteration=2, q_iterations=1, q_steps=16,
             batch_size=128, warmup_steps=800, eval_every=750, eval_envs=32)
