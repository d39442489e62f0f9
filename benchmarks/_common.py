"""Shared pieces of the benchmark scripts: timing, the machine record, JSON and Markdown output.

Timing rules (all scripts): compile first (``jit(...).lower(...).compile()``, timed
separately), one warm-up call, then ``repeats`` timed calls, each ending in
``jax.block_until_ready``; report the median. When two programs are compared
(engine vs bare scan, gradient vs forward) their calls are interleaved round by
round, so load from other processes on a shared machine hits both alike, and the
ratio is also given as the median of the per-round ratios.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Sequence

import jax

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    p.add_argument("--out", default=os.path.join(RESULTS_DIR, f"{name}.json"),
                   help="where to write the JSON results (default: benchmarks/results/%(prog)s.json)")
    p.add_argument("--tiny", action="store_true",
                   help="a seconds-long smoke run at toy sizes (checks the script, measures nothing useful)")
    return p


def machine() -> Dict[str, Any]:
    """What ran the benchmark: platform, cores, the 1-min load average at the start, versions."""
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover - not on every OS
        load = (float("nan"),) * 3
    dev = jax.devices()[0]
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg_1_5_15": [round(x, 2) for x in load],
        "jax_backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "jax": jax.__version__,
        "python": sys.version.split()[0],
        "date": datetime.date.today().isoformat(),
        "argv": sys.argv,
    }


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def compile_timed(fn: Callable, *args) -> tuple:
    """(compiled executable, seconds to lower + compile)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def interleaved(calls: Dict[str, Callable[[], Any]], repeats: int, min_total_s: float = 0.0,
                max_repeats: int = 200, min_unit_s: float = 0.02, cpu: Dict[str, List[float]] = None
                ) -> Dict[str, List[float]]:
    """Seconds per call of each program, measured in interleaved rounds after a warm-up call.

    Each timed sample of a program is ``inner`` back-to-back calls (seconds / inner), with
    ``inner`` chosen so that every program's sample lasts about as long as the slowest
    program's single call (and at least ``min_unit_s``): on a shared, oversubscribed
    machine a short call often runs inside one scheduler time slice at full speed while a
    long one gets the fair share, which would bias ratios of short to long programs.
    At least ``repeats`` rounds; more (up to ``max_repeats``) while the rounds together
    take less than ``min_total_s``. If ``cpu`` is a dict it receives the process CPU
    seconds per call (all threads) for the same samples.
    """
    for fn in calls.values():
        jax.block_until_ready(fn())
    warm = {k: timed(fn) for k, fn in calls.items()}
    unit = max(max(warm.values()), min_unit_s)
    inner = {k: max(1, int(round(unit / max(w, 1e-9)))) for k, w in warm.items()}
    rounds = max(repeats, min(max_repeats, int(min_total_s / max(unit * len(calls), 1e-9))))
    out: Dict[str, List[float]] = {k: [] for k in calls}
    if cpu is not None:
        cpu.update({k: [] for k in calls})
    for _ in range(rounds):
        for k, fn in calls.items():
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(inner[k]):
                r = fn()
            jax.block_until_ready(r)
            out[k].append((time.perf_counter() - t0) / inner[k])
            if cpu is not None:
                cpu[k].append((time.process_time() - c0) / inner[k])
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def median_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    return median([a / b for a, b in zip(num, den)])


def write_json(path: str, payload: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=_jsonable)
    os.replace(tmp, path)


def _jsonable(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def markdown_table(rows: List[Dict[str, Any]], columns: Sequence[str], formats: Dict[str, str] = None) -> str:
    formats = formats or {}
    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            if isinstance(v, float):
                cells.append(format(v, formats.get(c, ".3g")))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
