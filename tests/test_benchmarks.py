"""Smoke tests of the benchmark scripts at toy sizes (``--tiny``): each main runs and writes valid JSON.

Nothing here times anything; speed is measured by the scripts themselves (docs/benchmarks.md).
What is checked beyond "it runs": the engine and the bare scan of ``reverse_mode_ratio``
compute the same objective and gradient, memory figures are consistent, and the APG
comparison's goal check and plot work on the runs' record format.
"""
import json

import numpy as np
import pytest

from benchmarks import compile_time, memory_vs_horizon, reverse_mode_ratio, sweep_throughput, vs_brax_apg


def _load(path):
    with open(path) as f:
        payload = json.load(f)
    assert payload["machine"]["cpu_count"] >= 1 and payload["machine"]["jax"]
    assert isinstance(payload["markdown"], str) and payload["markdown"].startswith("|")
    return payload


def test_reverse_mode_ratio_tiny(tmp_path, capsys):
    out = tmp_path / "rmr.json"
    reverse_mode_ratio.main(["--tiny", "--out", str(out)])
    payload = _load(out)
    (row,) = payload["rows"]
    assert row["env"] == "cartpole" and row["horizon"] == 4 and row["batch"] == 4
    for k in ("engine_fwd", "engine_grad", "bare_fwd", "bare_grad"):
        assert row["median_s"][k] > 0 and row["compile_s"][k] > 0
    # The engine and the hand-written scan compute the same objective and gradient.
    np.testing.assert_allclose(row["value_engine"], row["value_bare"], rtol=1e-5)
    assert row["grad_max_abs_diff"] <= 1e-5 * max(row["grad_max_abs"], 1.0)
    assert row["grad_finite"]
    assert "| cartpole | 4 |" in capsys.readouterr().out


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


def test_sweep_throughput_tiny(tmp_path):
    out = tmp_path / "sw.json"
    sweep_throughput.main(["--tiny", "--out", str(out)])
    payload = _load(out)
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


@pytest.mark.slow
@pytest.mark.physics
def test_vs_brax_apg_tiny(tmp_path):
    """Brax's APG and our SHAC on the Brax pendulum at toy size (~1.5 min on 2 cores: Brax
    gradient compiles; BPO runs through the same code path as SHAC and is left out)."""
    out = tmp_path / "apg.json"
    vs_brax_apg.main(["--tiny", "--agents", "apg,shac", "--out", str(out)])
    payload = _load(out)
    entry = payload["envs"]["inverted_pendulum"]
    assert [r["agent"] for r in entry["runs"]] == ["apg", "shac"]
    assert entry["goal"]["goal_met"] in (True, False)
    for run in entry["runs"]:
        assert run["points"] and all(np.isfinite(p["eval_return"]) for p in run["points"])
    assert (tmp_path / "apg.png").exists()
