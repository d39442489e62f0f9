"""The flow-vs-Gaussian SVG(n) experiment: a tiny vmapped run writes its files with finite returns."""
import json
import os

import numpy as np
import pytest

from experiments import flow_vs_gaussian as fvg


def test_tiny_run_writes_json_and_png_with_finite_returns(tmp_path, capsys):
    # --tiny (PRESETS["tiny"]): SHAC, 2 seeds, 4 iterations of 4 envs × 8-step windows, evaluations after 2 and 4
    res = fvg.main(["--out", str(tmp_path), "--tiny"])
    assert res["config"]["num_envs"] == 4 and res["config"]["horizon"] == 8 and res["config"]["iterations"] == 4
    with open(tmp_path / "flow_vs_gaussian.json") as f:
        assert json.load(f) == json.loads(json.dumps(res))
    assert os.path.getsize(tmp_path / "flow_vs_gaussian.png") > 5_000
    for kind in ("gaussian", "flow"):
        r = res[kind]
        ret = np.asarray(r["eval_return"])
        assert ret.shape == (2, 2)                      # [seeds, evaluations after iterations 2 and 4]
        assert np.all(np.isfinite(ret)) and np.all(ret <= 0.0) and np.all(ret > -20.0 * 200)
        # pendulum never terminates: each iteration steps every env through its window, minus staggered cuts
        steps = np.asarray(r["env_steps"])
        assert steps.shape == (2,) and 0 < steps[0] < steps[1] <= 4 * 4 * 8
        assert r["final_return"] == ret[:, -1].tolist()
    # the two seeds differ (independent runs), and the two policies are different programs
    assert res["flow"]["eval_return"][0] != res["flow"]["eval_return"][1]
    assert "final eval return" in capsys.readouterr().out


def test_arguments_are_checked_and_help_works(capsys):
    with pytest.raises(ValueError, match="alpha"):
        fvg.run_experiment("unused", agent="shac", alpha=0.1)
    with pytest.raises(ValueError, match="env"):
        fvg.run_experiment("unused", env="lqr")
    with pytest.raises(ValueError, match="kind"):
        fvg.make_policy("beta", 3, 1)
    with pytest.raises(SystemExit) as exc:
        fvg.main(["--help"])
    assert exc.value.code == 0
    assert "--out" in capsys.readouterr().out
