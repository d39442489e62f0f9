"""The short-horizon actor-critic (SHAC) agent, BPO, the training-loop skeleton and the main job.

Acceptance (issue 2): ``test_shac_swings_up_cartpole_and_beats_bpo_at_equal_env_steps`` —
SHAC (n = 32, 32 envs, 400 iterations ≈ 366k env steps, the ``SHACConfig`` defaults) must
reach a final evaluation return > 100 on cart-pole swing-up for seeds 0 and 1 (a policy that
swings up within ~2 s and balances scores above 100; hanging still scores −200; trained runs
reach ≈ 160), and beat BPO (whole 200-step episodes, no critic, 8 envs, lr 1e-3) given at
least the same number of env steps by more than 50 return on each seed.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mbpo_grad import envs

from mbpo_grad import critics as C
from mbpo_grad import normalizer as N
from mbpo_grad.policies import deterministic
from mbpo_grad.agents import common, shac

# A tiny problem every fast test shares (one compile): pendulum, 4 envs, windows of 4 steps,
# 10-step episodes, so staggered envs hit the time limit inside windows.
TINY = shac.SHACConfig(env="pendulum", num_envs=4, horizon=4, episode_length=10, iterations=6, eval_every=3,
                       actor_hidden=(8,), critic_hidden=(8,), critic_iterations=2, critic_minibatches=2,
                       eval_envs=3)


# --------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("field, value, match", [
    ("horizon", 0, "horizon must be >= 1"),
    ("horizon", -3, "horizon must be >= 1"),
    ("horizon", 11, r"horizon \(11\) must be <= episode_length \(10\)"),
    ("horizon", 2.0, "horizon must be an int"),
    ("num_envs", 0, "num_envs"),
    ("iterations", 0, "iterations"),
    ("critic_minibatches", 17, "critic_minibatches"),
    ("lr_schedule", "exp", "lr_schedule"),
    ("actor_hidden", (8, 0), "actor_hidden"),
    ("adam_b1", 1.0, "adam_b1"),
    ("gamma", 1.5, "gamma"),
    ("lam", -0.1, "lam"),
    ("tau", 2.0, "tau"),
    ("actor_lr", 0.0, "actor_lr"),
    ("env", "nope", "env: .*unknown environment"),
])
def test_config_errors_name_the_field(field, value, match):
    with pytest.raises((ValueError, TypeError), match=match):
        shac.validate(TINY.replace(**{field: value}))


def test_hparams_are_float_arrays_and_checked():
    hp = TINY.hparams(gamma=0.9)
    assert isinstance(hp, shac.HParams) and hp.gamma.dtype == jnp.float32 and float(hp.gamma) == pytest.approx(0.9)
    with pytest.raises(TypeError, match="unknown hyper-parameter"):
        TINY.hparams(lr=1.0)
    with pytest.raises(ValueError, match="gamma"):
        shac.train(TINY, jax.random.key(0), hparams=TINY.hparams(gamma=-1.0), progress=False)


def test_bpo_config_is_whole_episodes_without_critic():
    cfg = shac.bpo_config("pendulum", num_envs=2)
    assert (cfg.horizon, cfg.episode_length, cfg.use_critic) == (200, 200, False)


# --------------------------------------------------------------------------- optimiser
def test_lr_multiplier_schedules():
    for sched, ref in (("constant", [1, 1, 1]), ("linear", [1, 0.5, 0]), ("cosine", [1, 0.5, 0])):
        got = [float(common.lr_multiplier(sched, c, 10)) for c in (0, 5, 10)]
        np.testing.assert_allclose(got, ref, atol=1e-7)
    assert float(common.lr_multiplier("linear", 20, 10)) == 0.0
    with pytest.raises(ValueError, match="lr_schedule"):
        common.lr_multiplier("step", 0, 10)


def test_make_optimizer_is_clip_then_adam_then_scheduled_lr():
    """Against optax's own clip_by_global_norm → scale_by_adam, times −lr·(1 − k/K)."""
    params = {"w": jnp.array([0.5, -1.0, 2.0])}
    grads = [{"w": jnp.array([10.0, -20.0, 5.0])}, {"w": jnp.array([0.1, 0.3, -0.2])}, {"w": jnp.array([3.0, 0.0, 1.0])}]
    lr, clip, K = 0.05, 1.0, 4
    ours = common.make_optimizer(jnp.float32(lr), jnp.float32(clip), total_steps=K, schedule="linear", b1=0.7, b2=0.95)
    ref = optax.chain(optax.clip_by_global_norm(clip), optax.scale_by_adam(b1=0.7, b2=0.95))
    s1, s2 = ours.init(params), ref.init(params)
    for k, g in enumerate(grads):
        u1, s1 = ours.update(g, s1, params)
        u2, s2 = ref.update(g, s2, params)
        np.testing.assert_allclose(np.asarray(u1["w"]), -lr * (1 - k / K) * np.asarray(u2["w"]), rtol=1e-5)
    # max_grad_norm <= 0 disables clipping: the first Adam step is then −lr·sign(g) either way,
    # so compare the second step, where the unclipped history differs.
    noclip = common.make_optimizer(lr, 0.0, total_steps=K, schedule="constant", b1=0.7, b2=0.95)
    adam = optax.scale_by_adam(b1=0.7, b2=0.95)
    s1, s2 = noclip.init(params), adam.init(params)
    for g in grads[:2]:
        u1, s1 = noclip.update(g, s1, params)
        u2, s2 = adam.update(g, s2, params)
    np.testing.assert_allclose(np.asarray(u1["w"]), -lr * np.asarray(u2["w"]), rtol=1e-5)


# --------------------------------------------------------------------------- time limits
def test_timed_env_and_reset_where():
    env = envs.make("pendulum")
    step, reward, done, terminal = common.timed_env(env, episode_length=3)
    ts = common.reset_timed(env, jax.random.split(jax.random.key(0), 2))
    assert ts.t.tolist() == [0, 0]
    one = common.TimedState(ts.env_state[0], jnp.int32(2))
    nxt = step(one, jnp.array([0.3]), None)
    np.testing.assert_allclose(np.asarray(nxt.env_state), np.asarray(env.step(one.env_state, jnp.array([0.3]), None)))
    assert int(nxt.t) == 3 and bool(done(nxt)) and not bool(done(one)) and not bool(terminal(nxt))
    assert float(reward(one, jnp.array([0.3]))) == float(env.reward(one.env_state, jnp.array([0.3])))
    moved = common.TimedState(ts.env_state + 1.0, jnp.array([3, 1], jnp.int32))
    out = common.reset_where(env, moved, jnp.array([True, False]), jax.random.key(1))
    assert out.t.tolist() == [0, 1]
    np.testing.assert_array_equal(np.asarray(out.env_state[1]), np.asarray(moved.env_state[1]))
    assert np.all(np.abs(np.asarray(out.env_state[0, 0])) <= np.pi)  # a fresh pendulum reset


# --------------------------------------------------------------------------- the agent, exact wiring
def _window_reference(cfg, state, hp):
    """Python loops over one window per env, k = min(n, steps left before the time limit):
    the window return Σ_{j<k} γ^j r_j (+ γ^k V'(s_k) with the critic), and the critic's
    first-step loss: mean over live steps of (V(s_t) − G^λ_t)², G^λ from target values with
    G^λ_{k−1} = r_{k−1} + γ V'(s_k) at a time-limit cut (a truncation bootstraps)."""
    env = envs.make(cfg.env)
    pol_net = deterministic(env.obs_size, env.action_size, cfg.actor_hidden)
    critic = C.v_critic(env.obs_size, cfg.critic_hidden)
    gamma, lam = float(hp.gamma), float(hp.lam)

    def obs(s):
        return N.normalize(state.obs_stats, env.observe(s))

    rets, sq_errors = [], []
    for b in range(cfg.num_envs):
        s, t = state.env_state.env_state[b], int(state.env_state.t[b])
        k = min(cfg.horizon, cfg.episode_length - t)
        g, states, rewards = 0.0, [s], []
        for j in range(k):
            a = pol_net.sample(state.policy_params, obs(s), None)
            rewards.append(float(env.reward(s, a)))
            g += gamma**j * rewards[-1]
            s = env.step(s, a, None)
            states.append(s)
        v_targ = [float(critic.apply(state.target_params, obs(x))) for x in states]
        if cfg.use_critic:
            g += gamma**k * v_targ[k]
        rets.append(g)
        g_lam = v_targ[k]
        for j in reversed(range(k)):
            g_lam = rewards[j] + gamma * ((1 - lam) * v_targ[j + 1] + lam * g_lam)
            sq_errors.append((float(critic.apply(state.critic_params, obs(states[j]))) - g_lam) ** 2)
    return np.mean(rets), np.mean(sq_errors)


@pytest.mark.parametrize("use_critic", [True, False])
def test_first_window_return_actor_loss_and_critic_loss_match_python_loops(use_critic):
    cfg = TINY.replace(use_critic=use_critic, critic_iterations=1, critic_minibatches=1)
    hp = cfg.hparams(gamma=0.9, lam=0.7)
    agent = shac.make_agent(cfg)
    state = agent.init(jax.random.key(0), hp)
    assert state.env_state.t.tolist() == [0, 2, 5, 7]  # staggered starts: two envs cut inside the window
    state = state._replace(target_params=jax.tree_util.tree_map(lambda p: p + 0.1, state.target_params))
    _, m = jax.jit(agent.update)(state, hp, jax.random.key(1))
    ret, critic_loss = _window_reference(cfg, state, hp)
    assert float(m["window_return"]) == pytest.approx(ret, rel=1e-5, abs=1e-5)
    assert float(m["actor_loss"]) == pytest.approx(-ret / cfg.horizon, rel=1e-5, abs=1e-5)
    if use_critic:  # one full-batch critic step: the reported loss is the loss before it
        assert float(m["critic_loss"]) == pytest.approx(critic_loss, rel=1e-4)
    else:
        assert float(m["critic_loss"]) == 0.0


@pytest.mark.parametrize("estimator", ["pathwise", "auto"])
def test_actor_warmup_trains_only_the_critic_first(estimator):
    """actor_warmup = 2: the policy and its optimiser states (the PPO steps' too, for "auto") are
    untouched by the first two updates while the critic moves; the third update moves the policy."""
    cfg = TINY.replace(actor_warmup=2, estimator=estimator)
    hp = cfg.hparams()
    agent = shac.make_agent(cfg)
    update = jax.jit(agent.update)
    state = agent.init(jax.random.key(0), hp)
    s0 = state
    for i in range(2):
        state, m = update(state, hp, jax.random.key(10 + i))
        assert float(m["grad_norm"]) > 0  # the gradient is computed, not applied
    same = jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)), (s0.policy_params, s0.actor_opt, s0.score_opt),
                                  (state.policy_params, state.actor_opt, state.score_opt))
    assert all(jax.tree_util.tree_leaves(same))
    assert (s0.score_opt is None) == (estimator == "pathwise")
    assert not all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a, b: bool(jnp.all(a == b)), s0.critic_params, state.critic_params)))
    state, _ = update(state, hp, jax.random.key(12))
    assert not all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a, b: bool(jnp.all(a == b)), s0.policy_params, state.policy_params)))
    with pytest.raises(ValueError, match="actor_warmup"):
        shac.make_agent(TINY.replace(actor_warmup=-1))


@pytest.fixture(scope="module")
def tiny_run():
    state, metrics = shac.run(TINY, jax.random.key(3), progress=False)
    return state, metrics


def test_metrics_are_finite_and_env_steps_are_counted_exactly(tiny_run):
    state, m = tiny_run
    L, n, B = TINY.episode_length, TINY.horizon, TINY.num_envs
    t = [b * L // B for b in range(B)]
    steps, expected, finished = 0, [], [False] * B
    for _ in range(TINY.iterations):     # per-env step counters, reset at the limit
        for b in range(B):
            k = min(n, L - t[b])
            steps += k
            t[b] += k
            if t[b] >= L:
                t[b], finished[b] = 0, True
        expected.append(steps)
    np.testing.assert_array_equal(m["env_steps"], expected)
    assert state.env_state.t.tolist() == t and int(state.iteration) == TINY.iterations
    for k in ("window_return", "reward_per_step", "actor_loss", "critic_loss", "grad_norm"):
        assert m[k].shape == (TINY.iterations,) and np.all(np.isfinite(m[k])), k
    assert np.all(np.isfinite(m["episode_return"][1:]))  # every env has finished an episode by then
    assert m["eval_iteration"].tolist() == [3, 6] and np.all(np.isfinite(m["eval_return"]))
    assert float(state.obs_stats.count) == steps  # normaliser fed every live state once


def test_sweep_over_seeds_and_learning_rates(tiny_run):
    import mbpo_grad as mg

    _, m = tiny_run
    out = mg.sweep(shac.make_sweep_fn(TINY), seeds=[3], hparams={"actor_lr": [TINY.actor_lr, 0.1]})
    assert out["eval_return"].shape == (2, 1, 2) and out["final_return"].shape == (2, 1)
    np.testing.assert_array_equal(out["eval_env_steps"][0, 0], m["env_steps"][[2, 5]])
    # the grid point with the default learning rate is the same run as ``train``
    np.testing.assert_allclose(out["eval_return"][0, 0], m["eval_return"], rtol=1e-4, atol=1e-3)
    assert not np.allclose(out["eval_return"][1, 0], m["eval_return"], rtol=1e-4, atol=1e-3)


def test_evaluate_is_the_mean_undiscounted_return_of_fresh_episodes(tiny_run):
    state, _ = tiny_run
    env = envs.make("pendulum")
    pol = deterministic(env.obs_size, env.action_size, TINY.actor_hidden)
    key = jax.random.key(7)
    got = shac.evaluate(TINY, state, key)
    k_reset, _ = jax.random.split(key)
    total = 0.0
    for s in jax.vmap(env.reset)(jax.random.split(k_reset, TINY.eval_envs)):
        for _ in range(TINY.episode_length):
            a = pol.sample(state.policy_params, N.normalize(state.obs_stats, env.observe(s)), None)
            total += float(env.reward(s, a))
            s = env.step(s, a, None)
    assert got == pytest.approx(total / TINY.eval_envs, rel=1e-5)


def test_a_stochastic_policy_bundle_trains():
    from mbpo_grad.policies import gaussian

    cfg = TINY.replace(iterations=2, eval_every=2)
    pol = gaussian(3, 1, (8,))
    state, m = shac.run(cfg, jax.random.key(0), policy=pol, progress=False)
    assert np.all(np.isfinite(m["actor_loss"])) and np.all(np.isfinite(m["eval_return"]))
    with pytest.raises(ValueError, match="policy"):
        shac.make_agent(cfg, policy=gaussian(4, 1, (8,)))


# --------------------------------------------------------------------------- the main job's command line
def test_train_cli_writes_the_run_folder(tmp_path, capsys):
    from experiments import rundir, train

    out = tmp_path / "run"
    final = train.main(["--env", "pendulum", "--n", "4", "--num-envs", "2", "--iterations", "2", "--eval-every", "1",
                        "--episode-length", "8", "--seed", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert f"final evaluation return: {final:.2f}" in printed and "it     2/2" in printed
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["horizon"] == 4 and cfg["seed"] == 1
    cols = rundir.read_metrics(str(out / "metrics.csv"))
    ev = cols["value"][cols["metric"] == "eval_return"]
    assert ev.shape == (2,) and ev[-1] == pytest.approx(final, rel=1e-6)
    assert set(np.unique(cols["metric"])) >= {"env_steps", "actor_loss", "critic_loss", "grad_norm", "eval_return"}
    assert json.loads((out / "summary.json").read_text())["final_eval_return"] == pytest.approx(final)


# --------------------------------------------------------------------------- acceptance (learning)
SEEDS = (0, 1)
SWING_UP_THRESHOLD = 100.0
MARGIN_OVER_BPO = 50.0


@pytest.mark.slow
def test_shac_swings_up_cartpole_and_beats_bpo_at_equal_env_steps():
    from experiments import shac_vs_bpo

    res = shac_vs_bpo.compare("cartpole", SEEDS, n=32, num_envs=32, iterations=400, bpo_num_envs=8,
                              bpo_actor_lr=1e-3, verbose=False)
    s, b = res["shac"], res["bpo"]
    print(shac_vs_bpo.report(res))
    assert b["env_steps"] >= s["env_steps"] and s["env_steps"] > 300_000
    for i, seed in enumerate(SEEDS):
        assert s["final_return"][i] > SWING_UP_THRESHOLD, (seed, s["final_return"][i])
        assert s["final_return"][i] > b["final_return"][i] + MARGIN_OVER_BPO, (seed, s["final_return"][i],
                                                                               b["final_return"][i])


def test_remat_modes_change_memory_not_the_update():
    """``remat`` (issue 16: memory at scale) trades recomputation for memory: one update with
    nested checkpointing equals the one without (float32 rounding), and a bad mode is refused."""
    outs = []
    for remat in (False, "nested"):
        cfg = TINY.replace(remat=remat)
        agent = shac.make_agent(cfg)
        hp = cfg.hparams()
        state = agent.init(jax.random.key(0), hp)
        new, m = jax.jit(agent.update)(state, hp, jax.random.key(1))
        outs.append((jax.tree_util.tree_leaves(new.policy_params), float(m["grad_norm"])))
    assert outs[0][1] > 0 and abs(outs[0][1] - outs[1][1]) <= 1e-5 * outs[0][1]
    for a, b in zip(outs[0][0], outs[1][0]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="remat"):
        shac.make_agent(TINY.replace(remat="sometimes"))
