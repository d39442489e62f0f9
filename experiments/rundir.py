"""Run-folder conventions shared by the experiment scripts.

Every script writes one folder (``--out DIR``, default ``runs/<name>-<timestamp>/``)::

    config.json     everything needed to rerun (CLI arguments, resolved settings, versions)
    metrics.csv     long format, one value per row: run, n, seed, step, metric, value
    summary.json    small derived numbers (final returns per n, timings, ...)
    *.png           plots (matplotlib, Agg backend: no display needed)
    ckpt/           checkpoints (``mbpo_grad.checkpoint``), when the script makes any

Helpers here: ``new_run_dir``, ``write_json`` / ``read_json`` (atomic write-then-rename),
``MetricsTable`` (rows in memory → ``metrics.csv``), ``read_metrics`` (back as columns),
``pyplot()`` (matplotlib with the Agg backend), and ``CliParser`` / ``cli_error``: bad
command-line input ends with ONE line on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import io
import json
import math
import os
import secrets
import sys
from typing import Any, Dict, Iterable, List, Mapping, NoReturn, Optional, Sequence

import numpy as np

METRIC_COLUMNS = ("run", "n", "seed", "step", "metric", "value")

__all__ = [
    "METRIC_COLUMNS", "new_run_dir", "write_json", "read_json", "MetricsTable", "read_metrics",
    "write_text", "pyplot", "CliParser", "cli_error", "environment_info",
]


# --------------------------------------------------------------------------- folders and files
def new_run_dir(name: str, *, root: str = "runs", out: Optional[str] = None) -> str:
    """Create and return the run folder: ``out`` if given (may exist, must be a folder), else a
    fresh ``root/<name>-<YYYYmmdd-HHMMSS>`` (a ``-2``, ``-3`` ... suffix if taken)."""
    if out is not None:
        if os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"out: {out!r} exists and is not a folder")
        os.makedirs(out, exist_ok=True)
        return os.path.abspath(out)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    os.makedirs(root, exist_ok=True)
    base = os.path.join(root, f"{name}-{stamp}")
    path, k = base, 1
    while True:
        try:
            os.mkdir(path)
            return os.path.abspath(path)
        except FileExistsError:
            k += 1
            path = f"{base}-{k}"


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file in the same folder, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None  # JSON has no NaN / inf
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if hasattr(x, "shape") and hasattr(x, "dtype"):  # jax arrays
        return _jsonable(np.asarray(x))
    return x


def write_json(path: str, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (NumPy values converted; NaN/inf become null)."""
    write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------- metrics.csv
def _fmt_value(v: Any) -> str:
    v = float(v)
    if math.isnan(v):
        return "nan"
    return repr(v)  # shortest text that reads back to the same float64


class MetricsTable:
    """Rows of the long-format ``metrics.csv``: (run, n, seed, step, metric, value).

    ``add(run, n, seed, step, metric, value)`` one row; ``add_array(run, n, seeds, steps,
    metric, values[seeds, steps])`` a block. Values are written with ``repr`` so they read
    back bit-identical as float64 (float32 values are exact in float64).
    """

    def __init__(self):
        self._rows: List[tuple] = []

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, run: str, n: int, seed: int, step: int, metric: str, value: Any) -> None:
        self._rows.append((str(run), int(n), int(seed), int(step), str(metric), _fmt_value(value)))

    def add_array(self, run: str, n: int, seeds: Sequence[int], steps: Sequence[int], metric: str,
                  values: Any) -> None:
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (len(seeds), len(steps)):
            raise ValueError(f"values must have shape [seeds, steps] = [{len(seeds)}, {len(steps)}], got {values.shape}")
        for i, seed in enumerate(seeds):
            for j, step in enumerate(steps):
                self.add(run, n, seed, step, metric, values[i, j])

    def extend(self, rows: Iterable[Sequence[Any]]) -> None:
        for r in rows:
            self.add(*r)

    def rows(self) -> List[tuple]:
        return list(self._rows)

    def to_csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(METRIC_COLUMNS)
        w.writerows(self._rows)
        return buf.getvalue()

    def write(self, path: str) -> None:
        write_text(path, self.to_csv_text())


def read_metrics(path: str) -> Dict[str, np.ndarray]:
    """``metrics.csv`` as columns: run, metric (str arrays), n, seed, step (int64), value (float64)."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != METRIC_COLUMNS:
            raise ValueError(f"{path}: expected the header {','.join(METRIC_COLUMNS)}, got {header}")
        rows = list(reader)
    cols = list(zip(*rows)) if rows else [()] * len(METRIC_COLUMNS)
    return {
        "run": np.asarray(cols[0], dtype=str),
        "n": np.asarray(cols[1], dtype=np.int64),
        "seed": np.asarray(cols[2], dtype=np.int64),
        "step": np.asarray(cols[3], dtype=np.int64),
        "metric": np.asarray(cols[4], dtype=str),
        "value": np.asarray(cols[5], dtype=np.float64),
    }


# --------------------------------------------------------------------------- plotting
def pyplot():
    """``matplotlib.pyplot`` with the non-interactive Agg backend (safe without a display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------- command line
def cli_error(message: str, prog: Optional[str] = None) -> NoReturn:
    """Print ``<prog>: error: <message>`` as ONE line on stderr and exit with status 2."""
    prog = prog or os.path.basename(sys.argv[0] or "experiment")
    line = " ".join(str(message).split())  # one line, whatever the message holds
    print(f"{prog}: error: {line}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def unroll_length(text: str, minimum: int = 0, flag: str = "--ns"):
    """Parse one unroll length for ``flag``: an int >= ``minimum`` or ``"full"`` (the episode)."""
    if text == "full":
        return "full"
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{flag}: {text!r} is not an int >= {minimum} or 'full'") from None
    if n < minimum:
        raise ValueError(f"{flag}: unroll length must be >= {minimum} (or 'full'), got {n}")
    return n


class CliParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line on stderr and exit status 2
    (no usage block, no traceback); ``--help`` is unchanged."""

    def error(self, message: str) -> NoReturn:  # noqa: D401 - argparse hook
        cli_error(message, self.prog)

    def fail(self, message: str) -> NoReturn:
        """For checks after parsing (unknown env, missing folder, ...): same one-line exit 2."""
        cli_error(message, self.prog)


def environment_info() -> Dict[str, Any]:
    """Versions and devices, recorded in config.json."""
    import jax

    info: Dict[str, Any] = {"python": sys.version.split()[0], "jax": jax.__version__,
                            "backend": jax.default_backend(),
                            "devices": [str(d) for d in jax.devices()],
                            "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    try:
        import mbpo_grad

        info["mbpo_grad"] = getattr(mbpo_grad, "__version__", "?")
    except Exception:  # pragma: no cover - importing the package is not the point here
        pass
    return info
