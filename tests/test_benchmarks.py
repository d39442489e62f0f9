"""Smoke tests of the benchmark scripts at toy sizes (``--tiny``): each main runs and writes valid JSON.

Nothing here times anything; speed is measured by the scripts themselves (docs/benchmarks.md).
What is checked beyond "it runs": the engine and the bare scan of ``reverse_mode_ratio``
compute the same objective and gradient, memory figures are consistent, and the APG
comparison's goal check and plot work on the runs' record format.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import compile_time, memory_vs_horizon, ppo_vs_brax, vs_brax_apg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path):
    with open(path) as f:
        payload = json.load(f)
    assert payload["machine"]["cpu_count"] >= 1 and payload["machine"]["jax"]
    assert isinstance(payload["markdown"], str) and payload["markdown"].startswith("|")
    return payload


def _check_reverse_mode_ratio(payload):
    """``reverse_mode_ratio --tiny`` (run by the GPU suite's dry run below)."""
    (row,) = payload["rows"]
    assert row["env"] == "cartpole" and row["horizon"] == 4 and row["batch"] == 4
    for k in ("engine_fwd", "engine_grad", "bare_fwd", "bare_grad"):
        assert row["median_s"][k] > 0 and row["compile_s"][k] > 0
    # The engine and the hand-written scan compute the same objective and gradient.
    np.testing.assert_allclose(row["value_engine"], row["value_bare"], rtol=1e-5)
    assert row["grad_max_abs_diff"] <= 1e-5 * max(row["grad_max_abs"], 1.0)
    assert row["grad_finite"]


def test_memory_vs_horizon_tiny(tmp_path):
    out = tmp_path / "mem.json"
    memory_vs_horizon.main(["--tiny", "--out", str(out)])
    payload = _load(out)
    rows = payload["rows"]
    assert [(r["remat"], r["horizon"]) for r in rows] == [("nested", 4), ("nested", 16)]
    for r in rows:
        assert r["peak_bytes"] == r["temp_bytes"] + r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"]
        assert r["temp_bytes"] > 0
    (summary,) = payload["summary"]
    assert summary["peak_ratio"] == pytest.approx(rows[1]["peak_bytes"] / rows[0]["peak_bytes"])
    assert summary["goal_met_peak"] is False  # the goal is about n = 32 -> 1000, not a toy pair


def test_compile_time_tiny(tmp_path):
    out = tmp_path / "ct.json"
    compile_time.main(["--tiny", "--out", str(out)])
    (row,) = _load(out)["rows"]
    assert "error" not in row, row.get("error")
    assert row["agent"] == "shac" and row["env"] == "cartpole"
    parts = row["import_s"] + row["build_s"] + row["compile_s"] + row["first_update_s"]
    assert row["total_s"] == pytest.approx(parts, rel=1e-6)
    assert isinstance(row["goal_met"], bool)


def _check_sweep_throughput(payload):
    """``sweep_throughput --tiny`` (run by the GPU suite's dry run below)."""
    assert [r["K"] for r in payload["rows"]] == [1, 3]
    seq = payload["sequential"]
    for r in payload["rows"]:
        assert r["env_steps"] == pytest.approx(r["K"] * seq["env_steps_per_run"], rel=0.2)
        assert r["speedup"] == pytest.approx(r["vmapped_env_steps_per_s"] / r["sequential_env_steps_per_s"])
        assert np.isfinite(r["final_return_mean"])
    assert payload["rows"][1]["sequential_extrapolated"] is True  # 1 one-seed run timed for K = 3


def _run(agent, returns, walls, steps_per_point=100):
    return {"agent": agent, "wall_s": walls[-1],
            "points": [{"wall_s": w, "eval_return": r, "env_steps": i * steps_per_point, "update": i}
                       for i, (w, r) in enumerate(zip(walls, returns))]}


def test_vs_brax_apg_goal_check_and_plot(tmp_path):
    apg = _run("apg", [5.0, 12.0, 20.0], [10.0, 60.0, 90.0])
    fast = _run("shac", [3.0, 25.0, 60.0], [5.0, 20.0, 40.0])  # reaches 20 at 20 s <= 90/3, ends higher
    slow = _run("shac", [3.0, 15.0, 25.0], [5.0, 20.0, 40.0])  # reaches 20 only at 40 s > 30 s
    assert vs_brax_apg.goal_check(apg, fast)["goal_met"] is True
    assert vs_brax_apg.goal_check(apg, fast)["shac_reaches_apg_final_at_s"] == 20.0
    assert vs_brax_apg.goal_check(apg, slow)["goal_met"] is False
    payload = {"envs": {"inverted_pendulum": {"runs": [apg, fast]}}}
    png = tmp_path / "plot.png"
    vs_brax_apg.plot(payload, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ppo_vs_brax_tiny(tmp_path):
    """``ppo_vs_brax --tiny`` (Brax's trivial ``fast`` env, 2 seeds, 20–28 s on 2 cores): both agents train
    the same env steps and are scored at the same ones; the schedule and the verdict rule."""
    out = tmp_path / "ppo.json"
    ppo_vs_brax.main(["--tiny", "--out", str(out)])
    payload = _load(out)
    entry = payload["envs"]["fast"]
    assert [(r["agent"], r["seed"]) for r in entry["runs"]] == [("brax", 0), ("ours", 0), ("brax", 1), ("ours", 1)]
    sched = entry["schedule"]
    for run in entry["runs"]:
        assert [p["env_steps"] for p in run["points"]] == [sched["eval_every"] * sched["env_steps_per_iteration"] * b
                                                          for b in range(1, sched["blocks"] + 1)]
        assert run["env_steps"] == sched["env_steps"] and all(np.isfinite(p["eval_return"]) for p in run["points"])
        assert run["wall_s"] >= run["steady_s"] > 0
    summ = entry["summary"]
    assert summ["agents"]["ours"]["final"]["n"] == 2 and np.isfinite(summ["agents"]["brax"]["final"]["se"])
    assert {v["verdict"] for v in summ["verdict"].values()} <= {"equal within seed noise", "better", "worse"}
    # Brax's budget rounding, shared by ours: whole epochs of whole iterations, at least the budget
    assert ppo_vs_brax.schedule(300_000, 64, 16, 11) == {"iterations": 300, "eval_every": 30, "blocks": 10,
                                                        "env_steps": 307_200, "env_steps_per_iteration": 1024}
    with pytest.raises(ValueError, match="num_evals"):
        ppo_vs_brax.schedule(1000, 4, 4, 1)
    ms = ppo_vs_brax.mean_se
    assert ms([1.0, 2.0, 3.0])["se"] == pytest.approx(1.0 / np.sqrt(3.0))
    assert ppo_vs_brax.verdict(ms([10.0, 12.0]), ms([11.0, 13.0]))["verdict"] == "equal within seed noise"
    assert ppo_vs_brax.verdict(ms([20.0, 21.0]), ms([10.0, 11.0]))["verdict"] == "better"
    assert ppo_vs_brax.verdict(ms([10.0, 11.0]), ms([20.0, 21.0]))["verdict"] == "worse"
    assert ppo_vs_brax.verdict(ms([200.0, 200.0]), ms([200.0, 200.0]))["verdict"] == "equal within seed noise"
    assert ppo_vs_brax.verdict(ms([1.0]), ms([1.0, 2.0]))["verdict"].startswith("n/a")


@pytest.mark.slow
@pytest.mark.physics
def test_gpu_suite_dry_run(tmp_path):
    """``benchmarks/gpu_suite.sh --tiny``: every step of the GPU suite at toy size on the CPU
    (~1.5 min on 2 cores, mostly Brax / MJX gradient compiles), its SUMMARY.md with each
    benchmark's table; the records of ``sweep_throughput``, ``reverse_mode_ratio`` (engine = bare
    scan) and ``vs_brax_apg --tiny --agents apg,shac`` checked as their own tests would."""
    out = tmp_path / "gpu"
    res = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_suite.sh"), "--tiny"], cwd=REPO,
                         env=dict(os.environ, GPU_SUITE_OUT=str(out), PYTHON=sys.executable),
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = (out / "SUMMARY.md").read_text()
    for name in ("sweep_throughput", "vs_brax_apg", "reverse_mode_ratio", "mjx_float32_gradients"):
        section = summary.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        assert section.startswith("|") and "failed" not in section, (name, section)
    payload = _load(out / "vs_brax_apg.json")
    entry = payload["envs"]["inverted_pendulum"]
    assert [r["agent"] for r in entry["runs"]] == ["apg", "shac"]
    assert entry["goal"]["goal_met"] in (True, False)
    for run in entry["runs"]:
        assert run["points"] and all(np.isfinite(p["eval_return"]) for p in run["points"])
    assert (out / "vs_brax_apg.png").exists()
    _check_sweep_throughput(_load(out / "sweep_throughput.json"))
    _check_reverse_mode_ratio(_load(out / "reverse_mode_ratio.json"))
    assert "| cartpole | 4 |" in summary
    rows = json.loads((out / "mjx_float32_gradients.json").read_text())
    assert rows and all(r["f32_finite"] == r["starts"] and r["median_cos"] >= 0.99 for r in rows)
