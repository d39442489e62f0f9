"""experiments.model_vs_sim: run folder, metrics, exact agreement of 'model' and 'sim' when the
model is the simulator, one-line CLI errors."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import model_vs_sim as MVS
from experiments import rundir as RD

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "experiments.model_vs_sim", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, needle", [
    (["--env", "atari"], "unknown environment 'atari'"),
    (["--ns", "0"], "unroll length must be >= 1"),
    (["--ns", "-3"], "unroll length must be >= 1"),
    (["--batches", "1"], "--batches must be >= 2"),
    (["--gamma", "1.5"], "--gamma must lie in [0, 1]"),
])
def test_bad_cli_input_is_one_line_exit_2(args, needle):
    res = _cli(*args)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr


class _SimAsModel:
    """A 'model' bundle whose step IS the pendulum simulator on observations (exact, noise ignored)."""

    def __init__(self, env):
        from mbpo_grad.models.ensemble import ModelState
        from mbpo_grad.rollout import transition_reward

        self.env, self.MS = env, ModelState
        self._reward = transition_reward(lambda s, a, s1: s1.reward)

    @staticmethod
    def _state(obs):
        return jnp.stack([jnp.arctan2(obs[1], obs[0]), obs[2]])

    def as_step(self, params):
        def step(ms, a, xi):
            s = self._state(ms.obs)
            return self.MS(self.env.observe(self.env.step(s, a, None)), self.env.reward(s, a))
        return step

    def as_reward(self):
        return self._reward

    def initial_state(self, obs):
        return self.MS(obs, jnp.zeros(obs.shape[:-1], obs.dtype))

    @staticmethod
    def observe(ms):
        return ms.obs

    def sample_noise(self, key, shape):
        return {"member": jnp.zeros(shape), "eps": jnp.zeros(tuple(shape) + (4,))}


def test_probe_gives_equal_sim_and_model_statistics_when_the_model_is_exact():
    """With the simulator itself as the 'model', every model statistic equals the simulator's."""
    from mbpo_grad.policies import deterministic

    env = MVS._make_env("pendulum", 8)
    policy = deterministic(env.obs_size, env.action_size, (8,))
    pp = policy.init(jax.random.PRNGKey(1))
    probe = MVS.make_probe(env, policy, _SimAsModel(env), 5, batches=4, batch_size=3, gamma=0.95)
    out = jax.device_get(probe(pp, None, jax.random.PRNGKey(2)))
    for name in ("model", "model_mean"):
        for m in ("grad_var", "grad_mse", "grad_norm"):
            np.testing.assert_allclose(out[name][m], out["sim"][m], rtol=2e-4, atol=1e-7)
        assert out[name]["grad_cos"] == pytest.approx(1.0, abs=1e-5)
        assert out[name]["grad_bias"] <= 1e-4 * out["sim"]["grad_norm"]
        assert out[name]["obs_error"] < 1e-4
    assert out["sim"]["grad_bias"] < 1e-5 * out["sim"]["grad_norm"]   # the reference is the sim's own mean
    # mse = variance·(M−1)/M + bias² for the simulator (the reference is its batch mean)
    np.testing.assert_allclose(out["sim"]["grad_mse"], out["sim"]["grad_var"] * 3 / 4, rtol=1e-4)


@pytest.mark.slow
def test_tiny_run_writes_the_run_folder(tmp_path):
    out = tmp_path / "mvs"
    assert MVS.main(["--tiny", "--out", str(out), "--no-progress"]) == 0
    for f in ("config.json", "metrics.csv", "summary.json", "model_vs_sim_pendulum_dpmb.png"):
        assert (out / f).is_file(), f
    cols = RD.read_metrics(str(out / "metrics.csv"))
    # 3 dynamics × 2 unroll lengths (2, full = 16) × 1 seed × 8 metrics
    assert cols["value"].size == 3 * 2 * 1 * len(MVS.METRICS)
    assert sorted(set(cols["n"].tolist())) == [2, 16]
    assert set(cols["run"].tolist()) == {f"pendulum/dpmb/{d}" for d in MVS.DYNAMICS}
    assert set(cols["step"].tolist()) == {0}
    sim = cols["run"] == "pendulum/dpmb/sim"
    finite = sim & (cols["metric"] != "model_holdout_mse")
    assert np.all(np.isfinite(cols["value"][finite]))
    summary = RD.read_json(str(out / "summary.json"))
    assert summary["status"] == "complete" and set(summary["crossover_n"]) == {"model", "model_mean"}
    assert summary["fits"]["0"]["transitions"] == 16 * 16


def test_crossover_is_where_the_model_stays_worse():
    table = RD.MetricsTable()
    ns = [1, 2, 4, 8, 16]
    sim = [1.0, 1.0, 1.0, 1.0, 1.0]
    model = [5.0, 0.5, 0.5, 2.0, 3.0]         # worse at n = 1 (reward-gradient noise), better at 2–4, worse from 8 on
    for n, a, b in zip(ns, sim, model):
        for dyn, v in (("sim", a), ("model", b), ("model_mean", b)):
            for m in MVS.METRICS:
                table.add(f"pendulum/dpmb/{dyn}", n, 0, 0, m, v if m == "grad_mse" else 0.5)
    cols = {k: np.asarray(v) for k, v in zip(RD.METRIC_COLUMNS, zip(*table.rows()))}
    cols["n"], cols["value"] = cols["n"].astype(int), cols["value"].astype(float)
    s = MVS.summarize(cols, {"episode_length": 16}, "pendulum/dpmb", ns, {0: {"transitions": 1, "holdout_mse": 0.1}})
    assert s["crossover_n"] == {"model": 8, "model_mean": 8}
    assert s["model_not_worse_ns"]["model"] == [2, 4]
