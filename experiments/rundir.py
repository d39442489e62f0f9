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
import datetime as _dt
import os
import sys
from typing import NoReturn, Optional

# The library writes run folders too (mbpo_grad.runs): one implementation of the files.
from mbpo_grad.runs import (METRIC_COLUMNS, MetricsTable, environment_info, read_json, read_metrics,  # noqa: F401
                            write_json, write_text)


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


# --------------------------------------------------------------------------- metrics.csv
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


FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def cpu_fast_compile() -> bool:
    """Lower XLA's CPU code-generation effort (≈40 % less compile time for these small,
    compile-dominated programs) via ``XLA_FLAGS``, unless a GPU plugin is installed, the user
    set the flag, or JAX's backend is already running. Returns whether it was applied."""
    import importlib.util

    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" in flags:
        return False
    if any(importlib.util.find_spec(m) is not None for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu")):
        return False
    if "jax" in sys.modules:
        try:
            from jax._src import xla_bridge

            if xla_bridge.backends_are_initialized():
                return False
        except Exception:
            return False
    os.environ["XLA_FLAGS"] = (flags + " " + FAST_COMPILE_FLAGS).strip()
    return True
