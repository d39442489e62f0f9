"""Where the float32 MJX gradient step spends its time: the constraint solver's line search.

    python scripts/mjx_float32_linesearch.py                  # MJX cart-pole, 512 starts x 128 steps
    python scripts/mjx_float32_linesearch.py --starts 64 --horizon 32

The benchmark ``benchmarks/mjx_float32_gradients.py`` measures float32 barely faster than float64
on this CPU. This script times the same per-start gradients (``jit(vmap(grad J))``, random linear
tanh policies, the benchmark's draw) for float64 with the model's solver settings and for float32
with the model's settings, with ``opt.ls_iterations`` capped (the adapter's existing
``ls_iterations=`` argument), with ``opt.tolerance`` raised, and with ``opt.iterations = 0``
(no solver iteration at all: a bound on what the solver costs; its gradients are not usable).
For each float32 variant: the cosine of its gradients with float64's, and the largest deviation
of its forward trajectory (qpos, qvel over the window) from the model-settings float32 one.
Times: median of three calls after the compiling one.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mbpo_grad as mg  # noqa: E402
from benchmarks import mjx_float32_gradients as B  # noqa: E402
from mbpo_grad import envs  # noqa: E402
from mbpo_grad.envs import mjx_adapter  # noqa: E402
from mbpo_grad.envs.brax_adapter import cast_floats  # noqa: E402

VARIANTS = (("model settings", {}), ("ls_iterations=4", {"ls": 4}), ("tolerance=1e-4", {"tol": 1e-4}),
            ("iterations=0 (bound)", {"iters": 0}))


def make_env(base, x64, tol=None, ls=None, iters=None):
    m = copy.deepcopy(base.info["mj_model"])
    if tol is not None:
        m.opt.tolerance = tol
    if iters is not None:
        m.opt.iterations = iters   # 0 is refused by the adapter's argument check: set on the model
    return mjx_adapter.from_mjx(m, reward=base.reward, episode_length=base.episode_length, x64=x64, ls_iterations=ls)


def measure(env, s0, params, horizon, x64):
    dtype = np.float64 if x64 else np.float32
    n = len(params["b"])
    s = cast_floats(jax.tree.map(jnp.asarray, s0), dtype)
    p = {k: jnp.asarray(v, dtype) for k, v in params.items()}
    grad = B.gradient_fn(env, horizon)
    g = jax.block_until_ready(grad(p, s))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(grad(p, s))
        times.append(time.perf_counter() - t0)
    pol = lambda q, st, e: jnp.tanh(q["W"] @ env.observe(st) + q["b"])

    def states(q, st):
        _, tr = mg.pathwise_returns(pol, q, env.step, env.reward, jax.tree.map(lambda x: x[None], st), horizon=horizon)
        return jnp.concatenate([tr.states.qpos[0], tr.states.qvel[0]], -1)

    traj = np.asarray(jax.jit(jax.vmap(states))(p, s), np.float64)
    return B.flat(g, n), float(np.median(times)), traj


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--starts", type=int, default=512)
    ap.add_argument("--horizon", type=int, default=128)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    base = envs.make("mjx:inverted_pendulum")
    opt = base.info["mj_model"].opt
    print(f"MJX cart-pole, {args.starts} starts x {args.horizon} steps; model opt: iterations {opt.iterations}, "
          f"ls_iterations {opt.ls_iterations}, tolerance {opt.tolerance:g}, ls_tolerance {opt.ls_tolerance:g}",
          flush=True)
    s0, params = B.draw("cartpole", args.starts, 0)
    with jax.enable_x64(True):
        g64, t64, _ = measure(make_env(base, True), s0, params, args.horizon, True)
    rows, ref = [{"variant": "float64, model settings", "time_s": t64}], None
    for name, kw in VARIANTS:
        g, t, traj = measure(make_env(base, False, **kw), s0, params, args.horizon, False)
        ref = traj if ref is None else ref
        cos = B.cosine(g, g64)
        finite = np.all(np.isfinite(g), 1)
        rows.append({"variant": f"float32, {name}", "time_s": t, "f64_over_f32": t64 / t,
                     "finite": int(finite.sum()), "median_cos": float(np.median(cos[finite])) if finite.any() else None,
                     "max_traj_dev_vs_f32_model": float(np.nanmax(np.abs(traj - ref)))})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| variant | grad time | f64 / f32 | finite | median cos vs f64 | max traj. deviation vs f32 model |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['time_s']:.2f} s | {r.get('f64_over_f32', 1.0):.2f}× | {r.get('finite', '')} | "
              f"{r.get('median_cos') or ''} | {r.get('max_traj_dev_vs_f32_model', '')} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"starts": args.starts, "horizon": args.horizon, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
