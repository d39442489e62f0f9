"""PPO / REINFORCE-with-baseline (``agents.ppo``): the surrogate's gradient against the exact
score-function gradient, the clip's zeroed gradients, advantages with time-limit truncations
against a step-by-step float64 reference, the collection's end flags, a short run through the
driver (progress_fn, run folder, ``mg.load_policy``), and config errors naming the field."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbpo_grad as mg
from mbpo_grad import runs
from mbpo_grad.agents import ppo
from mbpo_grad.agents.ppo import losses

TINY = dict(env="pendulum", num_envs=4, unroll_length=8, iterations=4, eval_every=2, eval_envs=2, episode_length=16,
            policy_hidden=(8,), value_hidden=(8,), epochs=2, minibatches=2)


def _normal_logp(theta, a):
    mu, log_sigma = theta
    return -0.5 * ((a - mu) / jnp.exp(log_sigma)) ** 2 - log_sigma - 0.5 * jnp.log(2 * jnp.pi)


def test_surrogate_gradient_at_ratio_one_is_the_score_function_gradient():
    """1-D Gaussian N(μ, σ²): ∇ log π = ((a − μ)/σ², (a − μ)²/σ² − 1) in closed form; at θ = θ_old
    the clipped and the plain surrogates both have gradient −mean(A ∇ log π) (float64)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        theta0 = jnp.array([0.3, -0.2])
        a = jnp.asarray(rng.normal(0.3, np.exp(-0.2), size=64))
        adv = jnp.asarray(rng.normal(size=64))
        mu, sigma = 0.3, np.exp(-0.2)
        score = np.stack([(np.asarray(a) - mu) / sigma**2, (np.asarray(a) - mu) ** 2 / sigma**2 - 1.0], axis=1)
        exact = -np.mean(np.asarray(adv)[:, None] * score, axis=0)
        log_ratio = lambda th: _normal_logp(th, a) - _normal_logp(theta0, a)
        g_clip = jax.grad(lambda th: losses.clipped_surrogate(log_ratio(th), adv, 0.2))(theta0)
        g_plain = jax.grad(lambda th: losses.ratio_surrogate(log_ratio(th), adv))(theta0)
        np.testing.assert_allclose(np.asarray(g_clip), exact, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.asarray(g_plain), exact, rtol=1e-12, atol=1e-14)


def test_clipping_zeroes_the_gradient_of_samples_pushed_outside_the_interval():
    """∂L/∂log ρ_i = −ρ_i A_i / N unless ρ_i left [1 − ε, 1 + ε] in the direction A_i pushes it."""
    with jax.enable_x64(True):
        rho = jnp.array([1.5, 1.5, 0.5, 0.5, 1.1, 0.9, 1.1])
        adv = jnp.array([1.0, -1.0, -1.0, 1.0, 1.0, -2.0, -3.0])
        g = jax.grad(lambda lr: losses.clipped_surrogate(lr, adv, 0.2))(jnp.log(rho))
        expect = -rho * adv / rho.shape[0]
        clipped = np.array([True, False, True, False, False, False, False])
        np.testing.assert_allclose(np.asarray(g), np.where(clipped, 0.0, expect), rtol=1e-14, atol=0)
        assert np.all(np.asarray(g)[~clipped] != 0)


@pytest.mark.parametrize("agent_kw", [dict(), dict(reinforce=True)])
def test_agent_loss_gradient_at_the_old_policy_is_the_score_function_gradient(agent_kw):
    """The agent's own loss (tanh-Gaussian bundle, ratio via ``log_ratio``) with c_v = c_e = 0 at
    θ = θ_old: ∇L = −mean(A ∇_θ log π_θ(a|o)) with ``log_prob`` of the stored actions (float64)."""
    with jax.enable_x64(True):
        kw = dict(TINY, x64=True)
        if agent_kw:
            kw = {k: v for k, v in kw.items() if k not in ("epochs", "minibatches")}
        cfg = ppo.reinforce_config(**kw) if agent_kw else ppo.PPOConfig(**kw)
        agent, parts = ppo.build(cfg)
        hp = cfg.hparams(value_cost=0.0, entropy_cost=0.0)
        state = jax.jit(agent.init)(jax.random.key(0), hp)
        pp = state.params["policy"]
        rng = np.random.default_rng(1)
        n = 16
        obs = jnp.asarray(rng.normal(size=(n, 3)))
        eps = jnp.asarray(rng.normal(size=(n, 1)))
        act, logp = jax.vmap(lambda o, e: parts.policy.sample_and_log_prob(pp, o, e))(obs, eps)
        adv = jnp.asarray(rng.normal(size=n))
        batch = (obs, eps, act, logp, adv, jnp.zeros(n), jnp.ones(n))
        g = jax.jit(jax.grad(lambda p: parts.loss_fn(p, pp, batch, hp)[0]))(state.params)["policy"]
        ref = jax.jit(jax.grad(
            lambda p: -jnp.mean(adv * jax.vmap(lambda o, a: parts.policy.log_prob(p, o, a))(obs, act))))(pp)
        for x, y in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(ref)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-9, atol=1e-12)
        assert agent.name == ("reinforce" if agent_kw else "ppo")


def _reference(r, v, nv, term, trunc, gamma, lam):
    """Step by step: δ_t = r_t + γ V(o'_t)[not terminal] − V(o_t); A_t = δ_t + γλ A_{t+1} inside an episode."""
    T = len(r)
    adv, g = np.zeros(T), np.zeros(T)
    a_next, g_next = 0.0, nv[-1]
    for t in reversed(range(T)):
        boot = 0.0 if term[t] else nv[t]
        delta = r[t] + gamma * boot - v[t]
        if term[t] or trunc[t]:
            adv[t], g[t] = delta, r[t] + gamma * boot
        else:
            adv[t], g[t] = delta + gamma * lam * a_next, r[t] + gamma * g_next
        a_next, g_next = adv[t], g[t]
    return adv, g


def test_advantages_with_truncations_match_a_step_by_step_reference():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        T, gamma, lam = 12, 0.97, 0.9
        term = np.zeros(T, bool)
        trunc = np.zeros(T, bool)
        trunc[[3, 8]] = True     # time limits inside the unroll
        term[5] = True           # a terminal state
        r = rng.normal(size=T)
        nv = rng.normal(size=T)                      # V(o'_t), before any reset
        v = np.empty(T)
        v[0] = rng.normal()
        for t in range(1, T):                        # o_t = o'_{t−1} inside an episode, a reset after an end
            v[t] = rng.normal() if (term[t - 1] or trunc[t - 1]) else nv[t - 1]
        args = [jnp.asarray(x) for x in (r, v, nv, term, trunc)]
        adv, y = losses.advantages_and_targets(*args, gamma, lam)
        ref_adv, _ = _reference(r, v, nv, term, trunc, gamma, lam)
        np.testing.assert_allclose(np.asarray(adv), ref_adv, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(y), ref_adv + v, rtol=1e-12, atol=1e-12)
        # reward-to-go: the bootstrapped Monte-Carlo return, = GAE with λ = 1
        adv_mc, g = losses.advantages_and_targets(*args, gamma, lam, mode="reward_to_go")
        _, ref_g = _reference(r, v, nv, term, trunc, gamma, 1.0)
        np.testing.assert_allclose(np.asarray(g), ref_g, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(adv_mc), ref_g - v, rtol=1e-12, atol=1e-12)
        adv1, _ = losses.advantages_and_targets(*args, gamma, 1.0)
        np.testing.assert_allclose(np.asarray(adv1), np.asarray(adv_mc), rtol=1e-12, atol=1e-12)
        with pytest.raises(ValueError, match="next_values"):
            losses.advantages_and_targets(args[0], args[1], args[2][:-1], args[3], args[4], gamma, lam)


def test_collection_marks_time_limits_as_truncations_with_the_pre_reset_next_observation():
    cfg = ppo.PPOConfig(**dict(TINY, unroll_length=12, episode_length=5, stagger=False))
    agent, parts = ppo.build(cfg)
    state = jax.jit(agent.init)(jax.random.key(0), cfg.hparams())
    ro, _ = jax.jit(parts.collect)(state.params["policy"], state.obs_stats, state.env_state, state.ep_return,
                                   state.last_return, state.finished, jax.random.key(1))
    trunc = np.asarray(ro.truncated)
    expect = np.zeros((12, 4), bool)
    expect[[4, 9]] = True
    np.testing.assert_array_equal(trunc, expect)
    assert not np.asarray(ro.terminal).any() and np.asarray(ro.ok).all()
    obs, nxt = np.asarray(ro.obs), np.asarray(ro.next_obs)
    inside = ~trunc[:-1]
    # no reset: o_{t+1} = o'_t (two compiled copies of observe: equal up to float32 rounding)
    np.testing.assert_allclose(nxt[:-1][inside], obs[1:][inside], rtol=1e-6, atol=1e-6)
    assert np.all(np.abs(nxt[:-1][~inside] - obs[1:][~inside]).max(axis=-1) > 0)  # reset after a cut


def test_train_writes_a_run_folder_and_the_saved_policy_reproduces_the_final_evaluation(tmp_path):
    cfg = ppo.PPOConfig(**TINY)
    calls = []
    run_dir = str(tmp_path / "run")
    make_policy, params, metrics = ppo.train(cfg, jax.random.key(3), progress=False, run_dir=run_dir,
                                             tensorboard=False, progress_fn=lambda step, m: calls.append((step, m)))
    assert [c[0] for c in calls] == [int(s) for s in metrics["eval_env_steps"]] == [64, 128]
    assert all(np.isfinite(metrics["eval_return"])) and metrics["total_skipped"][-1] == 0
    assert {"config.json", "metrics.csv", "summary.json", "policy"} <= set(os.listdir(run_dir))
    act, info = mg.load_policy(run_dir)
    assert info["meta"]["module"] == "mbpo_grad.agents.ppo"
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(act(obs)), np.asarray(make_policy(params)(obs)))
    assert runs.evaluate_saved(run_dir) == float(metrics["eval_return"][-1])


def test_hyper_parameters_are_traced_a_sweep_vmaps_over_them():
    """Every ``HParams`` field batched at once: tracing the vmapped sweep function fails if any of
    them is used as a Python number (``jax.eval_shape``: traced, not compiled, so cheap)."""
    cfg = ppo.PPOConfig(**dict(TINY, iterations=2, eval_every=2))
    fn = ppo.make_sweep_fn(cfg)
    hp = {k: jnp.stack([v, v]) for k, v in cfg.hparams()._asdict().items()}
    out = jax.eval_shape(jax.vmap(lambda h: fn(jax.random.key(0), h)), hp)
    assert out["final_return"].shape == (2,) and out["eval_return"].shape == (2, 1)


@pytest.mark.parametrize("field, value", [
    ("clip_eps", 0.0), ("gamma", 1.5), ("lam", -0.1), ("entropy_cost", -1.0), ("value_cost", float("nan")),
    ("lr", 0.0), ("reward_scale", -1.0), ("minibatches", 0), ("epochs", 0), ("unroll_length", 0),
    ("minibatches", 33), ("advantage", "td"), ("policy_hidden", (0,)), ("lr_schedule", "step"),
    ("adam_b1", 1.0), ("clip", 1), ("episode_length", 0),
])
def test_bad_config_values_raise_naming_the_field(field, value):
    cfg = ppo.PPOConfig(**dict(TINY, num_envs=4, unroll_length=8)).replace(**{field: value})
    with pytest.raises(ValueError, match=field):
        ppo.validate(cfg)


def test_bad_hparams_passed_to_train_raise_naming_the_field():
    cfg = ppo.PPOConfig(**TINY)
    with pytest.raises(ValueError, match="clip_eps"):
        ppo.run(cfg, jax.random.key(0), hparams=cfg.hparams(clip_eps=-0.2), progress=False)
    with pytest.raises(TypeError, match="HParams"):
        ppo.run(cfg, jax.random.key(0), hparams={"lr": 1.0}, progress=False)


def test_non_finite_transitions_are_weighted_out_and_their_envs_reset():
    """A simulator fault (NaN state) at 20% of steps: counted in ``bad_steps``, weighted out of the
    loss, the env reset; parameters and evaluations stay finite, no update is skipped."""
    from mbpo_grad import envs
    from mbpo_grad.envs.faults import inject_faults

    env = inject_faults(envs.make("pendulum", episode_length=16), rate=0.2)
    cfg = ppo.PPOConfig(**dict(TINY, unroll_length=16))
    agent = ppo.make_agent(cfg, env=env)
    hp = cfg.hparams()
    state = jax.jit(agent.init)(jax.random.key(0), hp)
    state, m = jax.jit(agent.update)(state, hp, jax.random.key(1))
    assert int(m["bad_steps"]) > 0 and int(m["total_skipped"]) == 0
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves((state.params, state.obs_stats)))
    assert np.isfinite(float(m["value_loss"])) and np.isfinite(float(m["policy_loss"]))
