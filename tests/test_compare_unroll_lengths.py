"""experiments.compare_unroll_lengths: run folder contents, one compiled program per n for a
16-seed vmapped sweep, resume == uninterrupted, exact LQR references, one-line CLI errors."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import compare_unroll_lengths as CUL
from experiments import rundir as RD

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# LQR, deterministic estimator, n in {1, full}, 16 seeds, 2 blocks each; LQR probe with 8 batches.
TINY = ["--tiny", "--envs", "lqr", "--estimators", "dpmb", "--ns", "1", "full", "--seeds", "16",
        "--probe-batches", "8", "--checkpoint-every", "1", "--no-progress", "--workers", "2"]


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "experiments.compare_unroll_lengths", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, needle", [
    (["--envs", "atari"], "unknown environment 'atari'"),
    (["--ns", "4", "-1"], "unroll length must be >= 0"),
    (["--ns", "two"], "'two' is not an int"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--resume", "/nonexistent/run-folder"], "no run folder"),
    (["--estimators", "reinforce"], "unknown estimator"),
    (["--bogus-flag"], "unrecognized arguments"),
])
def test_bad_cli_input_is_one_line_exit_2(args, needle):
    res = _cli(*args)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert needle in lines[0]


def test_resume_of_a_folder_without_config_is_rejected(tmp_path):
    res = _cli("--resume", str(tmp_path))
    assert res.returncode == 2 and "no config.json" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_out_folder_holding_a_run_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    res = _cli("--out", str(tmp_path))
    assert res.returncode == 2 and "already holds a run" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_help_runs():
    res = _cli("--help")
    assert res.returncode == 0 and "--resume" in res.stdout and "--full" in res.stdout


def test_plan_iterations_and_ns():
    s = CUL.EnvSettings(episode_length=100, num_envs=32, env_steps=96_000, blocks=8, max_iterations=400, hidden=(8,))
    assert CUL.plan_iterations("window", 1, s) == (400, 50)          # capped at max_iterations
    assert CUL.plan_iterations("window", 64, s) == (40, 5)           # 96000 // (64·32) = 46 → 5 per block
    assert CUL.plan_iterations("bpo", 100, s) == (24, 3)             # 96000 // 3200 = 30 → 3 per block
    assert CUL.plan_iterations("replay", 0, s) == (400, 50)
    assert CUL.resolve_ns([0, 1, 64, "full", 200], 100) == [0, 1, 64, 100]
    assert CUL.resolve_ns(CUL.DEFAULT_NS, 16) == [0, 1, 2, 4, 8, 16]


def test_lqr_batch_gradient_equals_closed_form_without_noise():
    """No dynamics noise, deterministic policy: ĝ_n on a batch is the closed form of envs.lqr exactly."""
    from mbpo_grad.envs import lqr

    with jax.enable_x64(True):
        T, gamma = 12, 0.95
        K = np.array([[0.3, -0.2]])
        setup = CUL.lqr_probe_setup("dpmb", episode_length=T, gamma=gamma, lqr={"noise": 0.0}, gain=K)
        A, B, Q, R = (setup.system.A, setup.system.B, setup.system.Q, setup.system.R)
        for n, delta in ((3, 0.2), (T, 0.0)):
            g, s0 = jax.jit(lambda key: CUL.lqr_batch_gradient(setup, n, key, delta, 7))(jax.random.PRNGKey(n))
            if n < T:
                ref = lqr.closed_form_gradient(A, B, Q, R, setup.K, s0, horizon=n + 1, gamma=gamma,
                                               P_terminal=(1.0 + delta) * setup.P[n + 1])
            else:
                ref = lqr.closed_form_gradient(A, B, Q, R, setup.K, s0, horizon=T, gamma=gamma)
            np.testing.assert_allclose(np.asarray(g), np.asarray(ref), rtol=1e-10, atol=1e-12)
        # the exact mean with the exact critic at n = T − 1 (P_T = 0) is the exact gradient itself
        np.testing.assert_allclose(np.asarray(CUL.lqr_mean_gradient(setup, T - 1, 0.0)), np.asarray(setup.g_star),
                                   rtol=1e-12)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """The tiny sweep run uninterrupted, and run again stopped after 2 blocks, then resumed."""
    root = tmp_path_factory.mktemp("cul")
    full_dir, part_dir = str(root / "full"), str(root / "part")
    assert CUL.main(TINY + ["--out", full_dir]) == 0
    traces = {k: len(v[3]) for k, v in CUL._ARM_CACHE.items() if k[0] == "lqr"}
    assert CUL.main(TINY + ["--out", part_dir, "--stop-after", "2"]) == 0
    interrupted = {"summary": os.path.exists(os.path.join(part_dir, "summary.json")),
                   "parts": sorted(os.listdir(os.path.join(part_dir, "parts"))),
                   "ckpt": sorted(os.listdir(os.path.join(part_dir, "ckpt")))}
    assert CUL.main(["--resume", part_dir, "--no-progress"]) == 0
    return full_dir, part_dir, traces, interrupted


@pytest.mark.slow
def test_tiny_run_writes_the_run_folder(tiny_runs):
    full_dir, _, _, _ = tiny_runs
    for f in ("config.json", "metrics.csv", "summary.json", "curves_lqr.png", "final_return_vs_n.png",
              "grad_stats_vs_n.png", "lqr_bias_variance_vs_n.png"):
        assert os.path.isfile(os.path.join(full_dir, f)), f
    with open(os.path.join(full_dir, "metrics.csv")) as fh:
        assert fh.readline().strip() == "run,n,seed,step,metric,value"
    cols = RD.read_metrics(os.path.join(full_dir, "metrics.csv"))
    train = cols["run"] == "lqr/dpmb"
    T = 16
    # 2 unroll lengths × 16 seeds × 2 blocks × 8 training metrics
    assert train.sum() == 2 * 16 * 2 * len(CUL.TRAIN_METRICS)
    assert sorted(set(cols["n"][train].tolist())) == [1, T]
    assert sorted(set(cols["seed"][train].tolist())) == list(range(16))
    assert sorted(set(cols["metric"][train].tolist())) == sorted(CUL.TRAIN_METRICS)
    for n in (1, T):
        steps = sorted(set(cols["step"][train & (cols["n"] == n)].tolist()))
        assert len(steps) == 2
    probe = np.char.find(cols["run"].astype(str), "/probe/") >= 0
    # 3 critic errors × 2 unroll lengths × 7 metrics
    assert probe.sum() == 3 * 2 * len(CUL.PROBE_METRICS)
    assert probe.sum() + train.sum() == cols["value"].size
    # the probe: exact zero bias for the whole episode, a biased critic at n = 1, and the
    # Monte-Carlo mean of the 8 batches consistent with the exact mean E ĝ_n
    for delta in ("-0.2", "0", "0.2"):
        run = f"lqr/dpmb/probe/critic_error={delta}"
        bias = {n: cols["value"][(cols["run"] == run) & (cols["n"] == n) & (cols["metric"] == "grad_bias")][0]
                for n in (1, T)}
        assert bias[T] == 0.0 and bias[1] > 0.0
        z = cols["value"][(cols["run"] == run) & (cols["metric"] == "mc_mean_error_z")]
        assert np.all(z < 5.0), z
    masked = cols["value"][train & (cols["metric"] == "masked_frac")]
    assert np.all((masked >= 0) & (masked <= 1))             # the window agents report their guard's mask
    ret = cols["value"][train & (cols["metric"] == "eval_return")]
    assert np.all(np.isfinite(ret)) and np.all(ret < 0)      # LQR returns are costs
    summary = RD.read_json(os.path.join(full_dir, "summary.json"))
    assert summary["status"] == "complete"
    assert set(summary["train"]["lqr/dpmb"]) == {"1", str(T)}
    assert summary["best_n"]["lqr/dpmb"] in (1, T)
    assert any(t["title"].startswith("Final evaluation return") for t in summary["tables"])
    cfg = RD.read_json(os.path.join(full_dir, "config.json"))["config"]
    assert cfg["seeds"] == list(range(16)) and cfg["envs"] == ["lqr"]


@pytest.mark.slow
def test_sixteen_seed_sweep_is_one_compiled_program_per_n(tiny_runs):
    _, _, traces, _ = tiny_runs
    # one arm per n; each traced once although it ran 2 blocks for 16 vmapped seeds
    assert sorted(k[2] for k in CUL._ARM_CACHE if k[0] == "lqr") == [1, 16]
    assert traces and all(v == 1 for v in traces.values()), traces
    # the repeated (interrupted, resumed) runs reused the same compiled programs
    assert all(len(v[3]) == 1 for k, v in CUL._ARM_CACHE.items() if k[0] == "lqr")


@pytest.mark.slow
def test_resume_equals_uninterrupted(tiny_runs):
    full_dir, part_dir, _, interrupted = tiny_runs
    assert not interrupted["summary"]
    assert interrupted["parts"] == ["probe-lqr-dpmb.csv", "probe-lqr-dpmb.timing.json"]
    assert interrupted["ckpt"]        # stopped inside the training units, after a checkpoint
    a = RD.read_metrics(os.path.join(full_dir, "metrics.csv"))
    b = RD.read_metrics(os.path.join(part_dir, "metrics.csv"))
    keep_a, keep_b = a["metric"] != "wall_s", b["metric"] != "wall_s"  # wall-clock is not reproducible
    for col in ("run", "n", "seed", "step", "metric"):
        np.testing.assert_array_equal(a[col][keep_a], b[col][keep_b])
    np.testing.assert_array_equal(a["value"][keep_a], b["value"][keep_b])   # bit-identical, NaNs in place
    assert not os.listdir(os.path.join(part_dir, "ckpt"))                  # finished units drop checkpoints


@pytest.mark.slow
def test_block_driver_reproduces_make_train_fn(tiny_runs):
    """Blocks run through mg.sweep give the evaluations of the agent's own pure train_fn."""
    from mbpo_grad.agents import common

    full_dir, _, _, _ = tiny_runs
    arm = next(v[0] for k, v in CUL._ARM_CACHE.items() if k[0] == "lqr" and k[2] == 1)
    train_fn = jax.jit(common.make_train_fn(arm.agent, arm.iterations, arm.eval_every))
    cols = RD.read_metrics(os.path.join(full_dir, "metrics.csv"))
    for seed in (0, 5):
        _, _, evals = train_fn(jax.random.PRNGKey(seed), arm.hparams)
        sel = (cols["run"] == "lqr/dpmb") & (cols["n"] == 1) & (cols["seed"] == seed) & (cols["metric"] == "eval_return")
        np.testing.assert_allclose(cols["value"][sel], np.asarray(evals), rtol=2e-4)


@pytest.mark.slow
def test_report_on_a_real_run(tiny_runs, tmp_path):
    from experiments import report

    full_dir, part_dir, _, _ = tiny_runs
    out = tmp_path / "r.md"
    assert report.main([full_dir, part_dir, "--out", str(out)]) == 0
    text = out.read_text()
    for png in ("curves_lqr.png", "lqr_bias_variance_vs_n.png", "final_return_vs_n.png"):
        assert text.count(png + ")") == 2   # embedded once per run folder
    assert "Final evaluation return" in text and "| run | n |" in text


def test_window_gradient_statistics_are_those_of_the_trained_gradient():
    """The window arm's grad_norm is n × the norm of the gradient ``update`` applies (before
    clipping) on the same key: the probe differentiates ``Agent.actor_objective`` itself,
    time-limit bootstrap inside the window included (LQR with dynamics noise, Gaussian policy)."""
    from mbpo_grad.agents import shac

    n, T = 4, 6
    s = CUL.EnvSettings(episode_length=T, num_envs=4, env_steps=96, blocks=2, max_iterations=4, hidden=(8,),
                        critic_iterations=1, critic_minibatches=1, eval_envs=2)
    arm = CUL.build_arm("lqr", "svg", n, s)
    agent, hp = arm.agent, arm.hparams
    update = jax.jit(agent.update)
    state, _ = update(agent.init(jax.random.PRNGKey(0), hp), hp, jax.random.PRNGKey(1))
    key = jax.random.PRNGKey(2)
    _, traj = agent.actor_objective(state.policy_params, agent.actor_batch(state, hp, key), return_traj=True)
    alive, t = np.asarray(traj.alive), np.asarray(traj.states.t)
    assert ((alive[:, :-2] > 0) & (alive[:, 1:-1] == 0) & (t[:, 1:-1] >= T)).any(), "no truncation inside the window"
    g_norm, g_var = jax.jit(arm.grad_probe)(state, hp, key)
    _, m = update(state, hp, key)
    assert int(m["masked_envs"]) == 0
    np.testing.assert_allclose(float(g_norm), n * float(m["grad_norm"]), rtol=1e-5)
    # the variance is that of the same per-env gradients
    _, grads = shac.per_env_grads(agent.actor_objective, state.policy_params, agent.actor_batch(state, hp, key))
    flat = np.stack([np.concatenate([np.ravel(x[b]) for x in jax.tree_util.tree_leaves(grads)]) for b in range(4)])
    np.testing.assert_allclose(float(g_var), np.sum(np.var(flat, axis=0, ddof=1)) / 4, rtol=1e-4)
