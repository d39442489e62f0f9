"""experiments.rundir: run folders, the long-format metrics.csv, atomic JSON, one-line CLI errors."""
import json
import os

import numpy as np
import pytest

from experiments import rundir as RD


def test_new_run_dir_makes_fresh_folders_under_root(tmp_path):
    root = tmp_path / "runs"
    a = RD.new_run_dir("exp", root=str(root))
    b = RD.new_run_dir("exp", root=str(root))  # same second: a suffix keeps them apart
    assert a != b
    for path in (a, b):
        assert os.path.isdir(path)
        assert os.path.basename(path).startswith("exp-")
        assert os.path.dirname(path) == str(root)


def test_new_run_dir_with_out(tmp_path):
    out = tmp_path / "given"
    assert RD.new_run_dir("exp", out=str(out)) == str(out)
    assert RD.new_run_dir("exp", out=str(out)) == str(out)  # an existing folder is fine
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="out"):
        RD.new_run_dir("exp", out=str(f))


def test_metrics_csv_round_trips_values_bit_exactly(tmp_path):
    table = RD.MetricsTable()
    vals32 = np.asarray([0.1, -1e-7, 3.4028235e38], np.float32)
    table.add("pendulum/dpmb", 4, 0, 10, "eval_return", vals32[0])
    table.add("pendulum/dpmb", 4, 1, 10, "grad_var", vals32[1])
    table.add("pendulum/dpmb", 4, 2, 10, "grad_var", vals32[2])
    table.add("lqr/svg", 0, 0, 20, "eval_return", np.nan)
    table.add("lqr/svg", 0, 0, 20, "x", 1.0 / 3.0)
    table.add_array("lqr/svg", 8, [0, 1], [5, 10, 15], "env_steps", np.arange(6.0).reshape(2, 3))
    path = tmp_path / "metrics.csv"
    table.write(str(path))
    assert path.read_text().splitlines()[0] == "run,n,seed,step,metric,value"
    cols = RD.read_metrics(str(path))
    assert len(cols["value"]) == len(table) == 11
    np.testing.assert_array_equal(cols["value"][:3], vals32.astype(np.float64))
    assert np.isnan(cols["value"][3])
    assert cols["value"][4] == 1.0 / 3.0
    assert cols["run"][0] == "pendulum/dpmb" and cols["metric"][1] == "grad_var"
    np.testing.assert_array_equal(cols["n"][-6:], [8] * 6)
    np.testing.assert_array_equal(cols["seed"][-6:], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(cols["step"][-6:], [5, 10, 15] * 2)
    np.testing.assert_array_equal(cols["value"][-6:], np.arange(6.0))
    # same text again: writing is deterministic
    table2 = RD.MetricsTable()
    table2.extend(zip(cols["run"], cols["n"], cols["seed"], cols["step"], cols["metric"], cols["value"]))
    assert table2.to_csv_text() == path.read_text()


def test_metrics_errors(tmp_path):
    table = RD.MetricsTable()
    with pytest.raises(ValueError, match="values must have shape"):
        table.add_array("r", 1, [0, 1], [1], "m", np.zeros((1, 2)))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="expected the header"):
        RD.read_metrics(str(bad))


def test_write_json_is_atomic_and_strict_json(tmp_path):
    path = tmp_path / "summary.json"
    RD.write_json(str(path), {"a": np.float32(1.5), "b": np.arange(3), "c": float("nan"), "d": (np.int64(2), np.inf)})
    text = path.read_text()
    assert json.loads(text) == {"a": 1.5, "b": [0, 1, 2], "c": None, "d": [2, None]}
    assert "NaN" not in text and "Infinity" not in text
    assert sorted(os.listdir(tmp_path)) == ["summary.json"]  # no temporary file left behind
    assert RD.read_json(str(path))["a"] == 1.5


def test_cli_parser_error_is_one_line_exit_2(capsys):
    p = RD.CliParser(prog="prog")
    p.add_argument("--k", type=int)
    with pytest.raises(SystemExit) as exc:
        p.parse_args(["--k", "not-an-int"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prog: error: ") and "usage" not in err
    with pytest.raises(SystemExit) as exc:
        p.fail("a message\nover two lines")
    assert exc.value.code == 2
    assert capsys.readouterr().err == "prog: error: a message over two lines\n"


def test_pyplot_uses_agg(tmp_path):
    plt = RD.pyplot()
    import matplotlib

    assert matplotlib.get_backend().lower() == "agg"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "x.png")
    plt.close(fig)
    assert (tmp_path / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
