"""SHAC on the MJX cart-pole in float32 vs float64: eval returns, wall time, skipped updates.

    python -m benchmarks.mjx_shac_precision                      # 8 seeds x {float32, float64}
    python -m benchmarks.mjx_shac_precision --seeds 0,1,2 --horizon 32 --iterations 800
    python -m benchmarks.mjx_shac_precision --tiny               # smoke run (toy sizes)
    python -m benchmarks.mjx_shac_precision --precisions float32 --seeds 9,10 --set max_grad_norm=0.5

``--set FIELD=VALUE`` (repeatable) changes any other ``SHACConfig`` field (VALUE read as JSON, else
as a string; an unknown field is refused by name); ``--precisions`` runs a subset.

Env: ``envs.make("mjx:inverted_pendulum")`` through the config (``SHACConfig(env=...)``): the
builtin cart-pole, pole starting upright (qpos, qvel ~ U(−0.01, 0.01)), smooth upright reward
r_t = cos θ_{t+1} − 0.01 ‖a_t‖², no termination, time limit ``--episode-length`` (the upper
bound of a return is the episode length, reached by a pole held exactly upright with zero
force). The MJX step is ``envs.mjx_grad.step`` (implicit derivative of the constraint solve,
docs/mjx_gradients.md).

Each precision trains its seeds in its own fresh process (``--child``): float64 needs
``jax_enable_x64`` on before any array exists, and running float32 the same way keeps the two
alike (neither reuses the other's caches). The float32 child leaves ``jax_enable_x64`` off, as
users run it; the float64 child turns it on first and sets ``x64=True`` in the config. Same
config, same seeds (``jax.random.PRNGKey(seed)``) otherwise. Within a child the seeds run one
after another; a persistent compilation cache (a fresh temporary folder per child) spares the
later seeds the compilation, so the first seed's wall time includes it and the others' mostly
do not (tracing remains). Float32 and float64 trajectories of the same seed part after a few
hundred steps (round-off on an unstable system), so the comparison is of the two precisions'
distributions of returns over seeds, not seed by seed.

Reported per run: the evaluation returns (deterministic policy, ``eval_envs`` fresh episodes,
every ``eval_every`` iterations), final / best / mean of the last ``--last`` evaluations; wall
time of the whole ``shac.train`` call (``wall_s``, compilation included), the first block's time
(compilation + ``eval_every`` iterations + one evaluation) and the steady seconds per iteration
after it; SHAC's guard counters (``total_skipped`` actor updates skipped, ``masked_envs`` summed
over iterations and its per-iteration max); and the dtype of the trained policy parameters
(checks that each run really ran at its precision).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks import _common as C

NAME = "mjx_shac_precision"
ENV = "mjx:inverted_pendulum"
# The measured configuration (see docs/mjx_gradients.md, "SHAC in float32 vs float64"). SHAC's
# default actor lr 1e-2 did not learn this task in 200 iterations (eval ≤ 21); 1e-3 did. Windows
# of 32 (the earlier setting: --horizon 32 --iterations 800, the same 731,680 env steps) train
# float32 worse than float64 at 16 seeds (p = 0.008); windows of 64 over 400 iterations learn
# faster in both and show no float32 / float64 difference at 32 seeds (eighth session).
DEFAULTS = dict(horizon=64, num_envs=32, episode_length=200, iterations=400, eval_every=20, eval_envs=32,
                actor_lr=1e-3)
SOLVED = 190.0  # a seed counts as reaching the ceiling (200) when its mean of the last evaluations is >= this
TINY = dict(horizon=4, num_envs=2, episode_length=8, iterations=2, eval_every=1, eval_envs=2, actor_lr=1e-3)
PRECISIONS = ("float32", "float64")


def child(precision: str, seeds: list, settings: dict, cache_dir: str) -> list:
    """Runs in the fresh process: one ``shac.train`` per seed at ``precision``; the result rows.

    A persistent XLA compilation cache in ``cache_dir`` (fresh per child) lets the seeds after
    the first reuse the first one's compiled programs (each ``shac.train`` builds a new agent, so
    the in-memory jit cache would not); their wall time still includes tracing."""
    x64 = precision == "float64"
    import jax

    if x64:
        jax.config.update("jax_enable_x64", True)  # before any array is created
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return [train_one(precision, seed, settings) for seed in seeds]


def train_one(precision: str, seed: int, settings: dict) -> dict:
    """One ``shac.train`` at ``precision`` (x64 already set up by ``child``); the result row."""
    x64 = precision == "float64"
    import jax
    import numpy as np

    from mbpo_grad import runs
    from mbpo_grad.agents import shac

    critic_minibatches = min(4, settings["horizon"] * settings["num_envs"])
    extra = dict(critic_minibatches=critic_minibatches)
    extra.update(runs._tuples(shac.SHACConfig, settings.get("set", {})))  # JSON lists back to tuples
    cfg = shac.SHACConfig(env=ENV, horizon=settings["horizon"], num_envs=settings["num_envs"],
                          episode_length=settings["episode_length"], iterations=settings["iterations"],
                          eval_every=settings["eval_every"], eval_envs=settings["eval_envs"],
                          actor_lr=settings["actor_lr"], x64=x64, **extra)
    stamps = []  # (iteration, seconds since the train call started) at each evaluation
    t0 = time.perf_counter()

    def progress_fn(_env_steps, metrics):
        stamps.append((int(metrics["iteration"]), time.perf_counter() - t0))

    _, params, m = shac.train(cfg, jax.random.PRNGKey(seed), progress=False, progress_fn=progress_fn)
    wall = time.perf_counter() - t0
    dtypes = sorted({str(np.asarray(x).dtype) for x in jax.tree.leaves(params)
                     if np.issubdtype(np.asarray(x).dtype, np.floating)})
    ev = np.asarray(m["eval_return"], np.float64)
    first_it, first_s = stamps[0] if stamps else (0, float("nan"))
    steady = ((stamps[-1][1] - first_s) / (stamps[-1][0] - first_it)
              if len(stamps) > 1 and stamps[-1][0] > first_it else float("nan"))
    return {
        "precision": precision, "seed": seed, "jax_enable_x64": bool(jax.config.jax_enable_x64),
        "param_dtypes": dtypes,
        "eval_iteration": np.asarray(m["eval_iteration"]).tolist(), "eval_return": ev.tolist(),
        "final_return": float(ev[-1]), "best_return": float(np.max(ev)),
        "best_iteration": int(np.asarray(m["eval_iteration"])[int(np.argmax(ev))]),
        "wall_s": wall, "first_block_s": first_s, "s_per_iteration": steady,
        "total_skipped": int(np.asarray(m["total_skipped"])[-1]),
        "masked_envs_sum": int(np.sum(m["masked_envs"])), "masked_envs_max": int(np.max(m["masked_envs"])),
        "critic_skipped": int(np.sum(m["critic_skipped"])), "reset_envs": int(np.sum(m["reset_envs"])),
        "env_steps": int(np.asarray(m["env_steps"])[-1]),
    }


def run_child(precision: str, seeds: list, settings: dict, timeout: float) -> list:
    """All seeds of one precision in one fresh process (with its own compilation cache)."""
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="shac_xla_cache_") as cache:
        cmd = [sys.executable, "-m", "benchmarks." + NAME, "--child", precision,
               "--seeds", ",".join(map(str, seeds)), "--settings", json.dumps(settings), "--cache-dir", cache]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * len(seeds), cwd=root)
        except subprocess.TimeoutExpired:
            return [{"precision": precision, "seed": s, "error": f"timed out after {timeout * len(seeds):.0f} s"}
                    for s in seeds]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return [{"precision": precision, "seed": s, "error": " | ".join(tail) or f"exit {proc.returncode}"}
                for s in seeds]
    return json.loads(lines[-1])


def summarise(rows: list, last: int) -> list:
    """Per-precision means over the seeds (rows without an error), the standard error of the mean
    of ``mean_last{last}`` (sample std / √seeds) and how many seeds reach ``SOLVED``."""
    import numpy as np

    out = []
    for p in PRECISIONS:
        rs = [r for r in rows if r.get("precision") == p and "error" not in r]
        if not rs:
            continue
        ml = np.array([r[f"mean_last{last}"] for r in rs])
        out.append({
            "precision": p, "seeds": len(rs),
            "final_return": float(np.mean([r["final_return"] for r in rs])),
            "best_return": float(np.mean([r["best_return"] for r in rs])),
            f"mean_last{last}": float(np.mean(ml)),
            f"mean_last{last}_se": float(np.std(ml, ddof=1) / np.sqrt(len(ml))) if len(ml) > 1 else float("nan"),
            f"seeds_ge_{SOLVED:g}": int(np.sum(ml >= SOLVED)),
            "wall_s": float(np.mean([r["wall_s"] for r in rs])),
            "s_per_iteration": float(np.mean([r["s_per_iteration"] for r in rs])),
            "total_skipped": int(sum(r["total_skipped"] for r in rs)),
            "masked_envs_sum": int(sum(r["masked_envs_sum"] for r in rs)),
        })
    return out


def parse_overrides(items: list, parser) -> dict:
    """``["max_grad_norm=0.5", ...]`` -> ``{"max_grad_norm": 0.5}``; fields checked against SHACConfig
    (those this benchmark sets itself, ``env`` and ``x64``, and unknown names are refused)."""
    import dataclasses

    from mbpo_grad.agents.shac import SHACConfig

    fields = {f.name for f in dataclasses.fields(SHACConfig)}
    own = set(DEFAULTS) | {"env", "x64"}
    out = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            parser.error(f"--set: expected FIELD=VALUE, got {item!r}")
        if name not in fields:
            parser.error(f"--set: {name!r} is not a SHACConfig field")
        if name in own:
            parser.error(f"--set: {name!r} has its own option here (or is fixed by the benchmark)")
        try:
            out[name] = json.loads(raw)
        except ValueError:
            out[name] = raw
    return out


def main(argv=None) -> dict:
    p = C.parser(NAME, __doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2,3,4,5,6,7", help="comma-separated PRNG seeds (default 0-7)")
    for k, v in DEFAULTS.items():
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=None, help=f"default {v}")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="another SHACConfig field (repeatable; VALUE parsed as JSON, else a string)")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated subset of float32,float64")
    p.add_argument("--last", type=int, default=5, help="also report the mean of the last LAST evaluations")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per run (default 900)")
    p.add_argument("--child", default=None, choices=PRECISIONS, help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--settings", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, [int(s) for s in args.seeds.split(",")], json.loads(args.settings),
                               args.cache_dir)), flush=True)
        return {}
    settings = dict(TINY if args.tiny else DEFAULTS)
    for k in DEFAULTS:
        v = getattr(args, k)
        if v is not None:
            settings[k] = v
    for k in ("horizon", "num_envs", "episode_length", "iterations", "eval_every", "eval_envs"):
        if settings[k] < 1:
            p.error(f"--{k.replace('_', '-')}: must be >= 1, got {settings[k]}")
    if settings["horizon"] > settings["episode_length"]:
        p.error(f"--horizon ({settings['horizon']}) must be <= --episode-length ({settings['episode_length']})")
    if not settings["actor_lr"] > 0:
        p.error(f"--actor-lr: must be > 0, got {settings['actor_lr']}")
    overrides = parse_overrides(args.set, p)
    if overrides:
        settings["set"] = overrides
    precisions = [q for q in args.precisions.split(",") if q]
    if not precisions or any(q not in PRECISIONS for q in precisions):
        p.error(f"--precisions: expected a comma-separated subset of {','.join(PRECISIONS)}, got {args.precisions!r}")
    if args.last < 1:
        p.error(f"--last: must be >= 1, got {args.last}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds: expected comma-separated ints, got {args.seeds!r}")
    if args.tiny:
        seeds = seeds[:1]
    payload = {"benchmark": NAME, "machine": C.machine(), "env": ENV, "settings": settings, "seeds": seeds,
               "rows": []}
    for prec in precisions:
        C.log(f"  {prec}, seeds {seeds} ...")
        for row in run_child(prec, seeds, settings, args.timeout):
            if "error" in row:
                C.log(f"    error: {row['error']}")
            else:
                row[f"mean_last{args.last}"] = float(sum(row["eval_return"][-args.last:]) /
                                                     len(row["eval_return"][-args.last:]))
                C.log(f"    seed {row['seed']}: final {row['final_return']:.2f}  best {row['best_return']:.2f}  "
                      f"wall {row['wall_s']:.1f} s  skipped {row['total_skipped']}  masked {row['masked_envs_sum']}")
            payload["rows"].append(row)
            C.write_json(args.out, payload)
    payload["summary"] = summarise(payload["rows"], args.last)
    cols = ["precision", "seed", "final_return", "best_return", f"mean_last{args.last}", "best_iteration",
            "wall_s", "first_block_s", "s_per_iteration", "total_skipped", "masked_envs_sum", "masked_envs_max",
            "param_dtypes", "error"]
    fmt = {"final_return": ".2f", "best_return": ".2f", f"mean_last{args.last}": ".2f",
           f"mean_last{args.last}_se": ".2f", "wall_s": ".1f", "first_block_s": ".1f", "s_per_iteration": ".3f"}
    payload["markdown"] = C.markdown_table(payload["rows"], cols, fmt)
    payload["markdown_summary"] = C.markdown_table(
        payload["summary"], ["precision", "seeds", "final_return", "best_return", f"mean_last{args.last}",
                             f"mean_last{args.last}_se", f"seeds_ge_{SOLVED:g}", "wall_s", "s_per_iteration",
                             "total_skipped", "masked_envs_sum"], fmt)
    C.write_json(args.out, payload)
    print(f"SHAC on {ENV}: {settings}, seeds {seeds}")
    print(payload["markdown"])
    print()
    print("Mean over seeds:")
    print(payload["markdown_summary"])
    return payload


if __name__ == "__main__":
    main()
