"""The estimator-variance experiment reproduces the text's findings and its own analytic variances."""
import json
import os

import numpy as np
import pytest

from experiments import estimator_variance as ev

TRIALS, BATCH = 200, 1000


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("ev") / "ev.json"
    ev.main(["--out", str(out), "--trials", str(TRIALS), "--batch", str(BATCH), "--seed", "3",
             "--lqr-trials", "60", "--lqr-batch", "200"])
    with open(out) as fh:
        return json.load(fh), str(out)


def _se(r, n):
    return np.sqrt(np.asarray(r["variance"]) / n)


def test_json_layout_and_plot(result):
    res, path = result
    for key in ev.ESTIMATORS:
        assert set(res[key]) >= {"mean", "bias", "variance", "mse"}
        np.testing.assert_allclose(res[key]["mse"], res[key]["bias"] ** 2 + res[key]["variance"], rtol=1e-12)
        assert key in res["analytic"]
    assert set(res["lqr"]) >= {"pathwise", "score_function", "score_function_baseline", "exact"}
    png = os.path.splitext(path)[0] + ".png"
    assert res["plot"] == png and os.path.getsize(png) > 10_000


def test_analytic_values_at_theta_one():
    a = ev.analytic(1.0, 1000)
    np.testing.assert_allclose([a[k]["variance"] for k in ev.ESTIMATORS], [0.006, 0.060, 0.018], rtol=1e-12)
    np.testing.assert_allclose([a[k]["bias"] for k in ev.ESTIMATORS], [-2.0, 0.0, 0.0], atol=1e-12)


def test_findings(result):
    res, _ = result
    true = res["true_gradient"]
    assert true == 4.0
    naive, score, reparam = (res[k] for k in ev.ESTIMATORS)
    # naive: biased by -2 (up to Monte-Carlo error); the other two unbiased
    assert abs(naive["bias"] + 2.0) < 4.5 * _se(naive, TRIALS)
    assert abs(score["bias"]) < 4.5 * _se(score, TRIALS)
    assert abs(reparam["bias"]) < 4.5 * _se(reparam, TRIALS)
    # reparameterisation: variance well below the score function's
    assert reparam["variance"] < 0.5 * score["variance"]
    assert naive["variance"] < reparam["variance"]


def test_measured_variances_match_analytic(result):
    """The sample variance of 200 near-Gaussian estimates has relative standard error sqrt(2/199) ≈ 0.1."""
    res, _ = result
    for key in ev.ESTIMATORS:
        measured, exact = res[key]["variance"], res["analytic"][key]["variance"]
        assert abs(measured / exact - 1.0) < 4.5 * np.sqrt(2.0 / (TRIALS - 1)), (key, measured, exact)


def test_lqr_findings(result):
    res, _ = result
    lqr = res["lqr"]
    exact = np.asarray(lqr["exact"])
    n = lqr["config"]["trials"]
    for key in ("pathwise", "score_function", "score_function_baseline"):
        bias = np.asarray(lqr[key]["bias"])
        assert bias.shape == exact.shape
        assert np.all(np.abs(bias) < 4.5 * _se(lqr[key], n)), key
    assert lqr["pathwise"]["total_variance"] < 0.1 * lqr["score_function_baseline"]["total_variance"]
    assert lqr["score_function_baseline"]["total_variance"] < 0.1 * lqr["score_function"]["total_variance"]


def test_cli_help_and_bad_input(capsys):
    with pytest.raises(SystemExit) as e:
        ev.main(["--help"])
    assert e.value.code == 0
    assert "--trials" in capsys.readouterr().out
    with pytest.raises(ValueError, match="trials"):
        ev.run(trials=1, batch=10)
