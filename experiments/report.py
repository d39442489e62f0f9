"""One Markdown page with every plot and table of one or more run folders.

    python -m experiments.report runs/compare_unroll_lengths-20250101-120000 [RUN_DIR ...] [--out report.md]

For each run folder (see ``experiments.rundir``) the page holds: the settings from
``config.json``; every table listed under ``"tables"`` in ``summary.json`` (each a
``{"title", "columns", "rows"}`` dict); a table of the last logged value of every metric
in ``metrics.csv`` (mean ± std over seeds, per run and n); and every ``*.png`` in the
folder, embedded by a path relative to the page. Default output: ``RUN_DIR/report.md``
for one folder, ``runs/report-<timestamp>.md`` for several.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from experiments import rundir as RD

__all__ = ["render", "main", "markdown_table", "final_values_table"]


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not np.isfinite(v):
            return "–"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (numbers to 4 significant digits, None/NaN as –)."""
    head = "| " + " | ".join(_fmt(c) for c in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(x) for x in r) + " |" for r in rows]
    return "\n".join([head, sep] + body)


def final_values_table(cols: Dict[str, np.ndarray], max_rows: int = 400) -> Optional[str]:
    """Last logged value of every (run, n, metric), mean ± std over seeds, as Markdown."""
    if cols["value"].size == 0:
        return None
    runs = list(dict.fromkeys(cols["run"].tolist()))
    metrics = list(dict.fromkeys(cols["metric"].tolist()))
    rows = []
    for run in runs:
        in_run = cols["run"] == run
        for n in sorted(set(cols["n"][in_run].tolist())):
            row: List[Any] = [run, n]
            sel_rn = in_run & (cols["n"] == n)
            for metric in metrics:
                sel = sel_rn & (cols["metric"] == metric)
                if not sel.any():
                    row.append(None)
                    continue
                last = cols["step"][sel].max()
                v = cols["value"][sel & (cols["step"] == last)]
                v = v[np.isfinite(v)]
                if v.size == 0:
                    row.append(None)
                elif v.size == 1:
                    row.append(float(v[0]))
                else:
                    row.append(f"{_fmt(float(v.mean()))} ± {_fmt(float(v.std()))}")
            rows.append(row)
            if len(rows) >= max_rows:
                break
    return markdown_table(["run", "n"] + metrics, rows)


def _config_lines(cfg: Dict[str, Any]) -> List[str]:
    keys = ("script", "preset", "envs", "estimators", "ns", "seeds", "hparams", "dynamics", "checkpoint_every")
    out = []
    for k in keys:
        if k in cfg:
            v = cfg[k]
            if k == "seeds" and isinstance(v, list) and len(v) > 6:
                v = f"{len(v)} seeds ({v[0]}…{v[-1]})"
            out.append(f"- **{k}**: `{json.dumps(v)}`" if not isinstance(v, str) else f"- **{k}**: {v}")
    for k, v in cfg.items():
        if k not in keys and not isinstance(v, dict):
            out.append(f"- **{k}**: `{json.dumps(v)}`")
    return out


def render(run_dirs: Sequence[str], out_path: str) -> str:
    """The Markdown text of the report on ``run_dirs`` (image paths relative to ``out_path``)."""
    base = os.path.dirname(os.path.abspath(out_path))
    parts = ["# Experiment report", "",
             f"Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M:%S')} from {len(run_dirs)} run folder(s).", ""]
    for d in run_dirs:
        d = os.path.abspath(d)
        parts += [f"## {os.path.basename(d)}", "", f"Folder: `{d}`", ""]
        cfg_path = os.path.join(d, "config.json")
        if os.path.isfile(cfg_path):
            meta = RD.read_json(cfg_path)
            cfg = meta.get("config", meta) if isinstance(meta, dict) else {}
            spec = meta.get("spec") if isinstance(meta, dict) else None
            if isinstance(spec, dict):  # a train run (mbpo_grad.runs): the env actually trained on
                parts += [f"Agent **{meta.get('agent', '?')}** on env **{spec.get('env', '?')}**"
                          f"{' (a custom env object)' if meta.get('custom_env') else ''}, "
                          f"policy {meta.get('custom_policy') or spec.get('policy') or 'the default'}.", ""]
            parts += ["### Settings", ""] + _config_lines(cfg) + [""]
            env = meta.get("environment") if isinstance(meta, dict) else None
            if env:
                parts += [f"Ran with JAX {env.get('jax', '?')} on {env.get('backend', '?')} "
                          f"({', '.join(env.get('devices', []))}).", ""]
        summary = {}
        sum_path = os.path.join(d, "summary.json")
        if os.path.isfile(sum_path):
            summary = RD.read_json(sum_path)
            parts += [f"Status: **{summary.get('status', '?')}**.", ""]
            if "final_eval_return" in summary:
                parts += [f"Final evaluation return {summary['final_eval_return']:.4g} after "
                          f"{summary.get('env_steps')} env steps ({summary.get('wall_s', 0.0):.1f} s).", ""]
            if summary.get("error"):
                parts += [f"Stopped: {summary['error']}", ""]
            for t in summary.get("tables", []):
                parts += [f"### {t.get('title', 'Table')}", ""]
                if t.get("note"):
                    parts += [t["note"], ""]
                parts += [markdown_table(t["columns"], t["rows"]), ""]
        else:
            parts += ["No summary.json: the run is incomplete (resume it to finish).", ""]
        csv_path = os.path.join(d, "metrics.csv")
        if os.path.isfile(csv_path):
            cols = RD.read_metrics(csv_path)
            table = final_values_table(cols)
            if table:
                parts += ["### Last logged value of every metric (mean ± std over seeds)", "",
                          f"{cols['value'].size} rows in `metrics.csv`.", "", table, ""]
        pngs = sorted(f for f in os.listdir(d) if f.lower().endswith(".png"))
        if pngs:
            parts += ["### Plots", ""]
            for f in pngs:
                rel = os.path.relpath(os.path.join(d, f), base).replace(os.sep, "/")
                parts += [f"#### {f}", "", f"![{f}]({rel})", ""]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = RD.CliParser(prog="python -m experiments.report",
                     description="Write one Markdown page with every plot and table of the given run folders.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (with config.json / metrics.csv)")
    p.add_argument("--out", metavar="FILE", help="the Markdown file (default: RUN_DIR/report.md for one folder, "
                   "runs/report-<timestamp>.md for several)")
    args = p.parse_args(argv)
    for d in args.run_dirs:
        if not os.path.isdir(d):
            p.fail(f"RUN_DIR: no run folder {d!r}")
        if not any(os.path.isfile(os.path.join(d, f)) for f in ("config.json", "metrics.csv", "summary.json")):
            p.fail(f"RUN_DIR: {d!r} has no config.json, metrics.csv or summary.json (not a run folder)")
    if args.out:
        out = args.out
    elif len(args.run_dirs) == 1:
        out = os.path.join(args.run_dirs[0], "report.md")
    else:
        os.makedirs("runs", exist_ok=True)
        out = os.path.join("runs", f"report-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.md")
    if os.path.isdir(out):
        p.fail(f"--out: {out!r} is a folder; give a file name")
    try:
        RD.write_text(out, render(args.run_dirs, out))
    except (ValueError, OSError) as err:
        p.fail(f"cannot write the report: {err}")
    print(os.path.abspath(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
