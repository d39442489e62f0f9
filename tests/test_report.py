"""experiments.report: one Markdown page with every plot and table of the given run folders."""
import os
import subprocess
import sys


from experiments import plots as PL
from experiments import report
from experiments import rundir as RD

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_run(folder, name):
    """A run folder written with the shared conventions (no training: rows and a real plot)."""
    os.makedirs(folder)
    table = RD.MetricsTable()
    for n in (1, 4):
        for seed in (0, 1):
            for step in (10, 20):
                table.add("pendulum/dpmb", n, seed, step, "eval_return", -100.0 * n + seed + step)
                table.add("pendulum/dpmb", n, seed, step, "env_steps", 32 * n * step)
                table.add("pendulum/dpmb", n, seed, step, "wall_s", 0.1 * step)
    table.write(os.path.join(folder, "metrics.csv"))
    RD.write_json(os.path.join(folder, "config.json"), {"config": {"script": name, "envs": ["pendulum"],
                                                                    "seeds": list(range(20))}})
    RD.write_json(os.path.join(folder, "summary.json"), {
        "status": "complete",
        "tables": [{"title": "Best n", "columns": ["run", "best n"], "rows": [["pendulum/dpmb|x", 4]]},
                   {"title": "Numbers", "note": "a note", "columns": ["a", "b"], "rows": [[1e-9, None]]}]})
    cols = RD.read_metrics(os.path.join(folder, "metrics.csv"))
    PL.plot_return_curves(cols, ["pendulum/dpmb"], os.path.join(folder, "curves.png"), full=4)
    PL.plot_final_vs_n(cols, {"pendulum": ["pendulum/dpmb"]}, os.path.join(folder, "final.png"), fulls={})
    return cols


def test_report_embeds_every_plot_and_table(tmp_path):
    a, b = str(tmp_path / "run-a"), str(tmp_path / "run-b")
    _fake_run(a, "compare_unroll_lengths")
    _fake_run(b, "other")
    os.remove(os.path.join(b, "summary.json"))      # an interrupted run: no summary yet
    out = tmp_path / "pages" / "report.md"
    assert report.main([a, b, "--out", str(out)]) == 0
    text = out.read_text()
    assert text.count("![curves.png](../run-a/curves.png)") == 1
    assert "![final.png](../run-b/final.png)" in text
    for png in ("curves.png", "final.png"):
        assert (tmp_path / "run-a" / png).read_bytes()[:4] == b"\x89PNG"
    assert "### Best n" in text and "pendulum/dpmb\\|x" in text      # a '|' in a cell is escaped
    assert "| 1.000e-09 | – |" in text                                # None as –, tiny numbers in e-notation
    assert "the run is incomplete" in text
    # the metrics table: last step (20) of each (run, n), mean ± std over the 2 seeds
    assert "| pendulum/dpmb | 1 | -79.5 ± 0.5 |" in text
    assert "| pendulum/dpmb | 4 | -379.5 ± 0.5 |" in text
    assert "20 seeds (0…19)" in text


def test_report_default_output_next_to_a_single_run(tmp_path):
    a = str(tmp_path / "run")
    _fake_run(a, "x")
    assert report.main([a]) == 0
    assert os.path.isfile(os.path.join(a, "report.md"))


def test_markdown_table_formatting():
    md = report.markdown_table(["x", "y"], [[1, float("nan")], [2.5, "a|b"]])
    assert md.splitlines() == ["| x | y |", "|---|---|", "| 1 | – |", "| 2.5 | a\\|b |"]


def test_report_cli_errors_are_one_line(tmp_path):
    for args, needle in (([str(tmp_path / "missing")], "no run folder"), ([str(tmp_path)], "not a run folder"), ([], "required")):
        res = subprocess.run([sys.executable, "-m", "experiments.report", *args], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and needle in res.stderr, res.stderr
