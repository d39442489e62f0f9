"""SAC: SVG(0) + entropy. α → 0 recovers the deterministic policy gradient; soft targets; temperature;
the flow policy and the KL trust region plug in; learning pendulum swing-up."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo_grad import envs

from mbpo_grad import critics as C
from mbpo_grad import replay
from mbpo_grad.agents import ddpg, offpolicy, sac
from mbpo_grad.policies import deterministic, flow, gaussian

OBS, ACT = 3, 2


def _f64(tree):
    return jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), tree)


def _dpg_and_svg0_fn():
    """A jitted (log σ, ε scale, α) -> (DPG gradient of a deterministic tanh-MLP, SAC actor gradient of
    the Gaussian policy sharing its mean network: a = tanh(μ_w(s) + σ ε)), same critic, float64."""
    det = deterministic(OBS, ACT, (16,))
    gau = gaussian(OBS, ACT, (16,), log_std_min=-40.0, log_std_max=2.0, state_dependent_std=False)
    critic = C.q_critic(OBS, ACT, (16,))
    net = _f64(det.init(jax.random.PRNGKey(0)))
    cp = _f64(critic.init(jax.random.PRNGKey(1)))
    obs = jax.random.normal(jax.random.PRNGKey(2), (8, OBS), jnp.float64)
    eps0 = jax.random.normal(jax.random.PRNGKey(3), (8, ACT), jnp.float64)
    q = lambda o, a: critic.apply(cp, o, a)

    @jax.jit
    def fn(log_std, eps_scale, alpha):
        g_dpg = jax.grad(lambda p: ddpg.dpg_actor_loss(det, critic.apply, p, cp, obs))(net)
        gp = {"net": net, "log_std": jnp.full((ACT,), log_std, jnp.float64)}
        g_sac = jax.grad(lambda p: sac.sac_actor_loss(gau, q, p, obs, eps_scale * eps0, alpha))(gp)
        return g_dpg, g_sac

    return lambda log_std, eps_scale, alpha=0.0: fn(jnp.float64(log_std), jnp.float64(eps_scale), jnp.float64(alpha))


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_zero_temperature_gives_the_dpg_gradient():
    with jax.enable_x64(True):
        _dpg_and_svg0 = _dpg_and_svg0_fn()
        # exact: α = 0 and ε = 0 (the σ → 0 sample) — identical actions, identical chain rule
        g_dpg, g_sac = _dpg_and_svg0(log_std=-1.0, eps_scale=0.0)
        scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(g_dpg))
        assert scale > 1e-3
        assert _max_diff(g_dpg, g_sac["net"]) <= 1e-12 * scale
        # the limit: α = 0, ε ~ N(0, I), σ → 0: the error vanishes like O(σ)
        errs = []
        for log_std in (-4.0, -6.0, -8.0, -10.0):
            g_dpg, g_sac = _dpg_and_svg0(log_std=log_std, eps_scale=1.0)
            errs.append(_max_diff(g_dpg, g_sac["net"]))
        ratios = np.array(errs[:-1]) / np.array(errs[1:])
        np.testing.assert_allclose(ratios, np.exp(2.0), rtol=0.05)   # each step divides σ by e²
        assert errs[-1] < 1e-4 * scale
        # at α > 0 the entropy term changes the gradient
        g_dpg, g_sac = _dpg_and_svg0(log_std=-1.0, eps_scale=0.0, alpha=0.5)
        assert _max_diff(g_dpg, g_sac["net"]) > 1e-3 * scale


def test_actor_loss_gradient_matches_finite_differences():
    """The SAC actor gradient at α > 0 is the total derivative (through a and through log π_w)."""
    with jax.enable_x64(True):
        pol = gaussian(OBS, ACT, (8,))
        critic = C.twin_q(OBS, ACT, (8,))
        pp, cp = _f64(pol.init(jax.random.PRNGKey(0))), _f64(critic.init(jax.random.PRNGKey(1)))
        obs = jax.random.normal(jax.random.PRNGKey(2), (6, OBS), jnp.float64)
        eps = jax.random.normal(jax.random.PRNGKey(3), (6, ACT), jnp.float64)
        q = lambda o, a: C.twin_min(critic, cp, o, a)
        loss = lambda p: sac.sac_actor_loss(pol, q, p, obs, eps, 0.3)
        # reference written out by hand: mean α log π(a|s) − min Q(s, a), a = sample(s, ε)
        def ref(p):
            a = jax.vmap(pol.sample, in_axes=(None, 0, 0))(p, obs, eps)
            lp = jax.vmap(pol.log_prob, in_axes=(None, 0, 0))(p, obs, a)
            return jnp.mean(0.3 * lp - jax.vmap(q)(obs, a))
        loss = jax.jit(loss)
        assert float(loss(pp)) == pytest.approx(float(jax.jit(ref)(pp)), rel=1e-12)
        g = jax.jit(jax.grad(loss))(pp)
        direction = jax.tree_util.tree_map(lambda x: jax.random.normal(jax.random.PRNGKey(9), x.shape, x.dtype), pp)
        h = 1e-6
        plus = jax.tree_util.tree_map(lambda x, d: x + h * d, pp, direction)
        minus = jax.tree_util.tree_map(lambda x, d: x - h * d, pp, direction)
        fd = (float(loss(plus)) - float(loss(minus))) / (2 * h)
        an = sum(float(jnp.vdot(a, d)) for a, d in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(direction)))
        assert an == pytest.approx(fd, rel=1e-6)


def test_soft_targets_use_twin_minimum_and_entropy():
    pol = gaussian(OBS, ACT, (8,))
    twin = C.twin_q(OBS, ACT, (8,))
    single = C.q_critic(OBS, ACT, (8,))
    pp, cp = pol.init(jax.random.PRNGKey(0)), twin.init(jax.random.PRNGKey(1))
    B = 16
    batch = {"next_obs": jax.random.normal(jax.random.PRNGKey(2), (B, OBS)), "reward": jnp.linspace(-1, 1, B),
             "discount": (jnp.arange(B) % 3 != 0).astype(jnp.float32)}
    eps = jax.random.normal(jax.random.PRNGKey(3), (B, ACT))
    alpha, gamma = 0.2, 0.95
    y = jax.jit(lambda b: sac.soft_targets(pol, twin, pp, cp, b, eps, alpha, gamma))(batch)
    # by hand: each head with its own parameters, the log-density of the sampled action

    @jax.jit
    def by_hand(s2):
        a = jax.vmap(pol.sample, in_axes=(None, 0, 0))(pp, s2, eps)
        heads = [jax.vmap(single.apply, in_axes=(None, 0, 0))(jax.tree_util.tree_map(lambda x: x[i], cp), s2, a)
                 for i in (0, 1)]
        return heads, jax.vmap(pol.log_prob, in_axes=(None, 0, 0))(pp, s2, a)

    heads, lp = by_hand(batch["next_obs"])
    heads, lp = [np.asarray(h) for h in heads], np.asarray(lp)
    assert np.any(heads[0] < heads[1]) and np.any(heads[1] < heads[0])
    want = np.asarray(batch["reward"]) + gamma * np.asarray(batch["discount"]) * (np.minimum(*heads) - alpha * lp)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)


def test_temperature_moves_toward_the_target_entropy():
    lp_high_entropy = jnp.full((10,), -3.0)  # entropy ≈ 3 > target 1 → lower α
    g = jax.grad(sac.temperature_loss)(jnp.array(0.0), lp_high_entropy, -1.0)
    assert float(g) > 0   # gradient descent decreases log α
    g = jax.grad(sac.temperature_loss)(jnp.array(0.0), jnp.full((10,), 2.0), -1.0)
    assert float(g) < 0


def _buffer(env, n=64, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    buf = replay.init(n, offpolicy.transition_example(env))
    return replay.add(buf, {
        "obs": jax.random.normal(k[0], (n, env.obs_size)),
        "action": jax.random.uniform(k[1], (n, env.action_size), minval=-1.0, maxval=1.0),
        "reward": jax.random.normal(k[2], (n,)), "next_obs": jax.random.normal(k[3], (n, env.obs_size)),
        "discount": jnp.ones((n,))})


def _finite_and_moved(new, old):
    leaves_new, leaves_old = jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(old)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves_new)
    return any(bool(jnp.any(x != y)) for x, y in zip(leaves_new, leaves_old))


def test_one_update_with_a_flow_policy():
    env = envs.make("cartpole")   # 1-D action: the flow's sinh-arcsinh layers
    cfg = sac.SACConfig(env="cartpole", batch_size=16, updates_per_iteration=1, critic_hidden=(16,))
    pol = flow(env.obs_size, env.action_size, layers=1, hidden=(8,))
    algo = sac.make_algo(cfg, env, pol)
    assert algo.name == "sac-flow"
    hp = cfg.hparams()
    learner = algo.init(jax.random.PRNGKey(0), hp)
    new, metrics = jax.jit(algo.learn)(learner, _buffer(env), hp, jax.random.PRNGKey(1))
    assert _finite_and_moved(new.critic, learner.critic)
    assert _finite_and_moved(new.actor, learner.actor)
    assert _finite_and_moved(new.log_alpha, learner.log_alpha)
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_trust_region_actor_step_respects_the_radius():
    env = envs.make("pendulum")
    cfg = sac.SACConfig(batch_size=32, updates_per_iteration=1, actor_hidden=(16,), critic_hidden=(16,),
                        trust_region=True, kl_radius=1e-3)
    algo = sac.make_algo(cfg, env)
    hp = cfg.hparams()
    learner = algo.init(jax.random.PRNGKey(0), hp)
    learn = jax.jit(algo.learn)
    for i in range(4):
        radius = float(learner.tr.radius)
        new, m = learn(learner, _buffer(env, seed=i), hp, jax.random.PRNGKey(i))
        if float(m["tr_accepted"]) > 0:
            assert float(m["tr_kl"]) <= radius
        else:
            assert not _finite_and_moved(new.actor, learner.actor)
        learner = new


def test_bad_policy_and_hparams():
    with pytest.raises(ValueError, match="stochastic"):
        sac.make_agent(sac.SACConfig(), policy=deterministic(3, 1))
    with pytest.raises(ValueError, match="alpha_lr"):
        sac.make_agent(sac.SACConfig(alpha_lr=0.0))


@pytest.mark.slow
@pytest.mark.heavy  # a learning run (13–45 s): opt-in, MBPO_GRAD_HEAVY=1, to keep the suite under 15 min
def test_sac_learns_pendulum_swing_up():
    """Threshold −400 (random ≈ −1200, swing-up ≈ −150) after 10 000 env steps, seed 0."""
    cfg = sac.SACConfig(**LEARN)
    state, m = sac.run(cfg, jax.random.key(0), progress=False)
    assert m["eval_env_steps"][-1] == 10_000
    assert m["eval_return"][-1] >= -400, m["eval_return"]


LEARN = dict(env="pendulum", num_envs=8, iterations=1250, steps_per_iteration=1, updates_per_iteration=8,
             batch_size=128, warmup_steps=800, eval_every=1250, eval_envs=32)
