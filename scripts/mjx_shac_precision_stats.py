"""float32 vs float64 statistics over ``benchmarks.mjx_shac_precision`` result files (docs/mjx_gradients.md).

    python scripts/mjx_shac_precision_stats.py benchmarks/results/mjx_shac_precision_h64.json \
        benchmarks/results/mjx_shac_precision_h64_seeds16_31_float32.json \
        benchmarks/results/mjx_shac_precision_h64_seeds16_31_float64.json

Pools the rows of the files (a seed and precision seen twice is refused) and prints, over the seeds
both precisions ran: the mean ± standard error of the last-5 means, final and best returns; the
gap float32 − float64 with its standard error, a 95 % bootstrap interval (20,000 resamples, seed 0),
Welch's t-test and Mann–Whitney p; the seeds at or above 190 (last 5 / final / best) with Fisher's
exact p on the last-5 counts; the medians. The tables of "Windows of 64" were printed by this script.
"""
from __future__ import annotations

import json
import sys

import numpy as np
from scipy import stats

SOLVED = 190.0


def load(paths):
    rows = {}
    for path in paths:
        for r in json.load(open(path))["rows"]:
            if "error" in r:
                continue
            key = (r["precision"], r["seed"])
            if key in rows:
                raise SystemExit(f"{path}: {key} appears twice")
            r = dict(r, mean_last5=float(np.mean(r["eval_return"][-5:])))
            rows[key] = r
    return rows


def report(rows, seeds, label):
    get = lambda p, k: np.array([rows[(p, s)][k] for s in seeds])
    a, b = get("float32", "mean_last5"), get("float64", "mean_last5")
    n = len(seeds)
    se = lambda x: x.std(ddof=1) / np.sqrt(len(x))
    rng = np.random.default_rng(0)
    boot = [rng.choice(a, n).mean() - rng.choice(b, n).mean() for _ in range(20000)]
    print(f"seeds {label} (n = {n})")
    print(f"  last-5 mean: float32 {a.mean():.1f} ± {se(a):.1f}, float64 {b.mean():.1f} ± {se(b):.1f}; "
          f"gap {a.mean() - b.mean():.1f} ± {np.sqrt(a.var(ddof=1) / n + b.var(ddof=1) / n):.1f}, "
          f"95 % bootstrap [{np.percentile(boot, 2.5):.1f}, {np.percentile(boot, 97.5):.1f}], "
          f"Welch p {stats.ttest_ind(a, b, equal_var=False).pvalue:.2f}, "
          f"Mann-Whitney p {stats.mannwhitneyu(a, b).pvalue:.2f}")
    for k in ("final_return", "best_return"):
        x, y = get("float32", k), get("float64", k)
        print(f"  {k}: float32 {x.mean():.1f} ± {se(x):.1f}, float64 {y.mean():.1f} ± {se(y):.1f}")
    counts = {p: [int((get(p, k) >= SOLVED).sum()) for k in ("mean_last5", "final_return", "best_return")]
              for p in ("float32", "float64")}
    s32, s64 = counts["float32"][0], counts["float64"][0]
    print(f"  seeds >= {SOLVED:g} (last 5 / final / best): float32 {counts['float32']}, float64 {counts['float64']}; "
          f"Fisher p (last 5) {stats.fisher_exact([[s32, n - s32], [s64, n - s64]]).pvalue:.2f}")
    print(f"  medians of the last-5 means: {np.median(a):.1f}, {np.median(b):.1f}")


def main(paths):
    if not paths:
        raise SystemExit(__doc__)
    rows = load(paths)
    seeds = sorted({s for (p, s) in rows if ("float32", s) in rows and ("float64", s) in rows})
    if len(seeds) < 2:
        raise SystemExit("need at least two seeds run in both precisions")
    report(rows, seeds, f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else str(seeds))
    if len(seeds) >= 32:
        half = len(seeds) // 2
        report(rows, seeds[:half], "first half")
        report(rows, seeds[half:], "second half")


if __name__ == "__main__":
    main(sys.argv[1:])
