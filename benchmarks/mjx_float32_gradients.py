"""Per-env float32 pathwise gradients through MJX: finite fraction and cosine vs float64.

    python benchmarks/mjx_float32_gradients.py --starts 64 --horizon 128

On the builtin MJX cart-pole (``envs.make("mjx:inverted_pendulum")``), a random linear
tanh policy per start, J = Σ_{t<n} r_t, gradients ``jax.vmap(jax.grad(J_env))``:

    autodiff:  the adapter's step today (mjx.step, opt.iterations forced to 1),
    implicit:  envs.mjx_grad.step (the XML's own solver iterations, implicit-function VJP
               of the constraint solve; docs/mjx_gradients.md).

Float32 runs with jax_enable_x64 off (as users run it); float64 inside
``jax.enable_x64(True)``. Starts and parameters are drawn once in float64 and cast.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import envs  # noqa: E402
import mbpo_grad as mg  # noqa: E402
from mbpo_grad.envs import mjx_grad  # noqa: E402
from mbpo_grad.envs.brax_adapter import cast_floats  # noqa: E402


def build(mode: str, x64: bool, noise: float):
    iters = 1 if mode == "autodiff" else None
    env = envs.make("mjx:inverted_pendulum", x64=x64, solver_iterations=iters, reset_noise_scale=noise)
    if mode == "autodiff":
        return env
    m, dtype = env.info["mjx_model"], env.info["dtype"]
    low, high = env.info["ctrl_low"], env.info["ctrl_high"]

    def step(data, action, xi=None):  # the adapter's step with mjx_grad.step for mjx.step
        action = jnp.reshape(jnp.asarray(action, dtype), (env.action_size,))
        data = data.replace(ctrl=jnp.asarray(low, dtype) + 0.5 * (action + 1.0) * jnp.asarray(high - low, dtype))
        data, _ = lax.scan(lambda d, _: (cast_floats(mjx_grad.step(m, d), dtype), None), data, None, length=2)
        return data

    return dataclasses.replace(env, step=step)


def gradients(mode, x64, qpos, qvel, W, b, horizon, noise):
    env = build(mode, x64, noise)
    dt = env.info["dtype"]
    s0 = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), len(qpos)))
    s0 = s0.replace(qpos=jnp.asarray(qpos, dt), qvel=jnp.asarray(qvel, dt))
    params = {"W": jnp.asarray(W, dt), "b": jnp.asarray(b, dt)}

    def policy(p, s, e):
        return jnp.tanh(p["W"] @ env.observe(s) + p["b"])

    def one(p, s):
        r, _ = mg.pathwise_returns(policy, p, env.step, env.reward, jax.tree.map(lambda x: x[None], s),
                                   horizon=horizon)
        return r[0]

    g = jax.jit(jax.vmap(jax.grad(one)))
    t0 = time.perf_counter()
    jax.block_until_ready(g(params, s0))
    compile_and_run = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(g(params, s0))
    run = time.perf_counter() - t0
    G = np.concatenate([np.asarray(out["W"]).reshape(len(qpos), -1), np.asarray(out["b"]).reshape(len(qpos), -1)], 1)
    return G.astype(np.float64), compile_and_run, run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=64)
    ap.add_argument("--horizon", type=int, default=128)
    ap.add_argument("--noise", type=float, default=0.01, help="start noise half-width on qpos, qvel")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", default="autodiff,implicit")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    B = args.starts
    qpos, qvel = rng.uniform(-args.noise, args.noise, (2, B, 2))
    W, b = rng.normal(size=(B, 1, 4)), rng.normal(size=(B, 1))
    print(f"MJX cart-pole, {B} starts x {args.horizon} steps, seed {args.seed}")
    for mode in args.modes.split(","):
        jax.config.update("jax_enable_x64", False)
        g32, c32, t32 = gradients(mode, False, qpos, qvel, W, b, args.horizon, args.noise)
        with jax.enable_x64(True):
            g64, c64, t64 = gradients(mode, True, qpos, qvel, W, b, args.horizon, args.noise)
        fin32 = np.all(np.isfinite(g32), 1)
        fin64 = np.all(np.isfinite(g64), 1)
        both = fin32 & fin64
        cos = np.sum(g32 * g64, 1) / (np.linalg.norm(g32, axis=1) * np.linalg.norm(g64, axis=1) + 1e-300)
        med = float(np.median(cos[both])) if both.any() else float("nan")
        print(f"{mode:9s} float32 finite {fin32.sum()}/{B}  float64 finite {fin64.sum()}/{B}  "
              f"median cos(f32, f64) {med:.6f}  min {float(np.min(cos[both])) if both.any() else float('nan'):.4f}  "
              f"grad time f32 {t32:.2f}s f64 {t64:.2f}s (first call incl. compile {c32:.0f}s / {c64:.0f}s)  "
              f"non-finite starts {np.where(~fin32)[0].tolist()}")
        np.savez(f"/tmp/mjx_grads_{mode}.npz", g32=g32, g64=g64)


if __name__ == "__main__":
    main()
