"""Plots of the long-format ``metrics.csv`` (see ``experiments.rundir``), matplotlib Agg backend.

All functions take the columns returned by ``rundir.read_metrics`` and write one PNG.
The unroll length n is drawn on an ordinal axis (0, 1, 2, 4, …, full), so n = 0 and the
full episode sit next to the powers of two.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from experiments.rundir import pyplot

__all__ = ["select", "n_axis_labels", "plot_return_curves", "plot_final_vs_n", "plot_grad_vs_n", "plot_lqr_probe",
           "plot_metric_vs_n", "plot_seed_curves", "safe_name"]


def safe_name(text: str) -> str:
    """A file-name-safe version of a run label."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def select(cols: Dict[str, np.ndarray], **eq) -> np.ndarray:
    """Boolean mask of the rows whose columns equal the given values."""
    mask = np.ones(cols["value"].shape, bool)
    for k, v in eq.items():
        mask &= cols[k] == v
    return mask


def curves(cols, run: str, n: int, metric: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seeds, steps, values[seed, step]) of one metric of one (run, n)."""
    m = select(cols, run=run, n=n, metric=metric)
    seeds = np.unique(cols["seed"][m])
    steps = np.unique(cols["step"][m])
    vals = np.full((len(seeds), len(steps)), np.nan)
    si = np.searchsorted(seeds, cols["seed"][m])
    ti = np.searchsorted(steps, cols["step"][m])
    vals[si, ti] = cols["value"][m]
    return seeds, steps, vals


def n_axis_labels(ns: Sequence[int], full: Optional[int]) -> List[str]:
    return [f"full\n({n})" if full is not None and n == full else str(n) for n in ns]


def _colors(k: int):
    plt = pyplot()
    cmap = plt.get_cmap("viridis")
    return [cmap(x) for x in np.linspace(0.0, 0.92, max(k, 1))]


def _nanstat(fn, x, axis=0):
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return fn(x, axis=axis)


def plot_return_curves(cols, runs: Sequence[str], path: str, *, full: Optional[int] = None, title: str = "") -> None:
    """Rows: return vs env steps, return vs wall-clock; columns: ``runs`` (e.g. the estimators).

    One line per n (mean over seeds) with a min–max band over seeds.
    """
    plt = pyplot()
    fig, axes = plt.subplots(2, len(runs), figsize=(5.2 * len(runs), 7.5), squeeze=False)
    all_ns = sorted(set(cols["n"][np.isin(cols["run"], list(runs)) & (cols["metric"] == "eval_return")].tolist()))
    color_of = dict(zip(all_ns, _colors(len(all_ns))))  # one colour per n across the panels
    for j, run in enumerate(runs):
        ns = sorted(np.unique(cols["n"][select(cols, run=run, metric="eval_return")]))
        for row, xmetric in enumerate(("env_steps", "wall_s")):
            ax = axes[row, j]
            for n in ns:
                c = color_of[int(n)]
                _, _, y = curves(cols, run, n, "eval_return")
                _, _, x = curves(cols, run, n, xmetric)
                xm = _nanstat(np.nanmean, x)
                ym, lo, hi = _nanstat(np.nanmean, y), _nanstat(np.nanmin, y), _nanstat(np.nanmax, y)
                label = n_axis_labels([n], full)[0].replace("\n", " ")
                ax.plot(xm, ym, color=c, lw=1.6, marker="o", ms=2.5, label=f"n = {label}")
                ax.fill_between(xm, lo, hi, color=c, alpha=0.15, lw=0)
            ax.set_xlabel("environment steps" if xmetric == "env_steps" else "wall-clock [s] (compile excluded)")
            ax.set_ylabel("evaluation return")
            if xmetric == "env_steps":
                ax.set_xscale("log")
            ax.set_title(run, fontsize=10)
            ax.grid(alpha=0.3)
        axes[0, j].legend(fontsize=7, ncol=2, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_metric_vs_n(ax, cols, run: str, metric: str, *, reduce: str = "final", full: Optional[int] = None,
                     label: Optional[str] = None, color=None, spread: str = "std") -> Tuple[List[int], np.ndarray]:
    """Draw the mean over seeds of a training metric against the ordinal n axis of ``run``.

    reduce: "final" (last logged step) or "mean" (mean over the logged steps). spread: error bars
    of ± one std over seeds ("std") or from the smallest to the largest seed ("minmax", for log
    scales). Returns (ns, means).
    """
    ns = sorted(np.unique(cols["n"][select(cols, run=run, metric=metric)]))
    means, lo, hi = [], [], []
    for n in ns:
        _, _, v = curves(cols, run, n, metric)
        per_seed = v[:, -1] if reduce == "final" else _nanstat(np.nanmean, v, axis=1)
        m = _nanstat(np.nanmean, per_seed)
        means.append(m)
        if spread == "minmax":
            lo.append(m - _nanstat(np.nanmin, per_seed))
            hi.append(_nanstat(np.nanmax, per_seed) - m)
        else:
            sd = _nanstat(np.nanstd, per_seed)
            lo.append(sd)
            hi.append(sd)
    x = np.arange(len(ns))
    ax.errorbar(x, means, yerr=[lo, hi], marker="o", capsize=3, lw=1.6, label=label or run, color=color)
    ax.set_xticks(x)
    ax.set_xticklabels(n_axis_labels(ns, full), fontsize=8)
    ax.set_xlabel("unroll length n")
    ax.grid(alpha=0.3)
    return ns, np.asarray(means)


def plot_final_vs_n(cols, groups: Dict[str, Sequence[str]], path: str, *, fulls: Dict[str, int]) -> None:
    """One panel per group (an environment), one line per run (an estimator): final return vs n."""
    plt = pyplot()
    k = len(groups)
    fig, axes = plt.subplots(1, k, figsize=(4.8 * k, 4.0), squeeze=False)
    for ax, (group, runs) in zip(axes[0], groups.items()):
        for run in runs:
            plot_metric_vs_n(ax, cols, run, "eval_return", reduce="final", full=fulls.get(group),
                             label=run.split("/", 1)[-1])
        ax.set_ylabel("final evaluation return (mean ± std over seeds)")
        ax.set_title(group)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_grad_vs_n(cols, groups: Dict[str, Sequence[str]], path: str, *, fulls: Dict[str, int]) -> None:
    """Rows: gradient variance, gradient norm (log scale, mean over training and seeds, bars: the
    range over seeds); one column per group."""
    plt = pyplot()
    k = len(groups)
    fig, axes = plt.subplots(2, k, figsize=(4.8 * k, 7.0), squeeze=False)
    for j, (group, runs) in enumerate(groups.items()):
        for row, metric in enumerate(("grad_var", "grad_norm")):
            ax = axes[row, j]
            for run in runs:
                plot_metric_vs_n(ax, cols, run, metric, reduce="mean", full=fulls.get(group),
                                 label=run.split("/", 1)[-1], spread="minmax")
            ax.set_yscale("log")
            ax.set_ylabel({"grad_var": "gradient variance of the batch mean\n(tr Cov / batch, mean over training)",
                           "grad_norm": "‖batch-mean gradient‖ (mean over training)"}[metric], fontsize=8)
            ax.set_title(group)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lqr_probe(cols, runs: Sequence[str], path: str, *, full: Optional[int] = None,
                   title: str = "LQR: bias and variance of the n-step gradient vs the exact gradient") -> None:
    """Panels: bias², variance, MSE against n (log scale); one line per probe run."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), squeeze=False)
    styles = ["-", "--", ":", "-."]
    errors = sorted({run.rsplit("=", 1)[-1] for run in runs}, key=float)
    for run in runs:
        ns = sorted(np.unique(cols["n"][select(cols, run=run, metric="grad_bias")]))
        x = np.arange(len(ns))
        bias = np.array([cols["value"][select(cols, run=run, n=n, metric="grad_bias")][0] for n in ns])
        var = np.array([cols["value"][select(cols, run=run, n=n, metric="grad_var")][0] for n in ns])
        est = run.split("/")[1]
        color = "C0" if est == "dpmb" else "C3"  # colour: estimator; line style: critic error
        ls = styles[errors.index(run.rsplit("=", 1)[-1]) % len(styles)]
        label = run.replace("lqr/", "").replace("/probe/", ", ")
        for ax, y in zip(axes[0], (bias ** 2, var, bias ** 2 + var)):
            y = np.where(y > 0, y, np.nan)  # log scale: an exact zero bias (n = full) is left off
            ax.plot(x, y, ls, marker="o", color=color, label=label, lw=1.6)
            ax.set_xticks(x)
            ax.set_xticklabels(n_axis_labels(ns, full), fontsize=8)
    for ax, name in zip(axes[0], ("bias² ‖E ĝ_n − ∇J‖²", "variance E‖ĝ_n − E ĝ_n‖²", "MSE = bias² + variance")):
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("unroll length n")
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_seed_curves(path: str, runs: Dict[str, Tuple[np.ndarray, np.ndarray]], *, colours: Dict[str, str],
                     labels: Dict[str, str], title: str, ylabel: str = "evaluation return",
                     xlabel: str = "real environment steps", centre: str = "mean", log_x: bool = False,
                     decorate=None) -> None:
    """Evaluation return against env steps: every seed thin, the mean (or median) thick.

    ``runs[name] = (x [evals], y [seeds, evals])``; ``decorate(ax)`` adds extra marks (targets).
    """
    plt = pyplot()
    stat = {"mean": np.mean, "median": np.median}[centre]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, (x, y) in runs.items():
        x, y = np.asarray(x, float), np.asarray(y, float)
        for row in y:
            ax.plot(x, row, color=colours[name], alpha=0.25, lw=0.8)
        ax.plot(x, stat(y, 0), color=colours[name], lw=2, label=labels[name])
    if decorate is not None:
        decorate(ax)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
