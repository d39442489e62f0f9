"""Per-env float32 pathwise gradients through MJX: finite fraction, cosine vs float64, time.

    python benchmarks/mjx_float32_gradients.py                     # acceptance: 64 starts x 128 steps
    python benchmarks/mjx_float32_gradients.py --starts 16 --horizon 32 --envs cartpole

Envs (each through its adapter, whose MJX step is ``envs.mjx_grad.step``: MJX's values with
the model's own solver iterations, implicit-function derivative of the constraint solve):

    cartpole      envs.make("mjx:inverted_pendulum")             upright reward, rail limits
    brax_pendulum envs.make("brax:inverted_pendulum", backend="mjx", reward=upright_reward())
    hopper        envs.make("brax:hopper", backend="mjx")         Brax's reward; floor contacts

Per start a random linear tanh policy a = tanh(W o + b), W ~ N(0, 1/obs_size), b ~ N(0, 1),
J = Σ_{t<n} r_t without termination (the whole window counts), gradients
``jax.jit(jax.vmap(jax.grad(J_env)))``. Float32 runs with jax_enable_x64 off (as users run
it), float64 inside ``jax.enable_x64(True)``; starts (the float64 reset states) and
parameters are drawn once and cast. Times: the second call of the compiled gradient (the
first includes compilation), float32 and float64 in the same process.

``--baseline`` adds, for the cart-pole, the previous adapter step (plain ``mjx.step`` with
``opt.iterations`` forced to 1, autodiff through the solver), whose float32 gradients were
NaN on some starts. ``--check-forward`` compares the float64 implicit gradient with
``jax.jacfwd`` of the unmodified ``mjx.step`` (the XML's iterations: forward mode passes the
solver's ``while_loop``), the exact derivative of the converged solve.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mbpo_grad as mg  # noqa: E402
from mbpo_grad import envs  # noqa: E402
from mbpo_grad.envs import brax_adapter  # noqa: E402
from mbpo_grad.envs.brax_adapter import cast_floats  # noqa: E402

ENVS = ("cartpole", "brax_pendulum", "hopper")


def build(name: str, x64: bool, variant: str = "implicit"):
    """The env; ``variant`` 'implicit' (the adapters), 'autodiff1' or 'plain' (cart-pole only:
    ``mjx.step`` in the adapter's step with iterations forced to 1 / the XML's iterations)."""
    if name == "cartpole":
        iters = 1 if variant == "autodiff1" else None
        env = envs.make("mjx:inverted_pendulum", x64=x64, solver_iterations=iters)
        if variant == "implicit":
            return env
        from mujoco import mjx

        m, dt = env.info["mjx_model"], env.info["dtype"]
        low, high = env.info["ctrl_low"], env.info["ctrl_high"]

        def step(d, a, xi=None):  # the adapter's step with plain mjx.step
            a = jnp.reshape(jnp.asarray(a, dt), (env.action_size,))
            d = d.replace(ctrl=jnp.asarray(low, dt) + 0.5 * (a + 1.0) * jnp.asarray(high - low, dt))
            return lax.scan(lambda x, _: (cast_floats(mjx.step(m, x), dt), None), d, None, length=2)[0]

        return dataclasses.replace(env, step=step)
    if variant != "implicit":
        raise ValueError(f"variant: {variant!r} is only for the cart-pole")
    if name == "brax_pendulum":
        return envs.make("brax:inverted_pendulum", backend="mjx", x64=x64, reward=brax_adapter.upright_reward())
    if name == "hopper":
        return envs.make("brax:hopper", backend="mjx", x64=x64)
    raise ValueError(f"env: unknown {name!r}; expected one of {ENVS}")


def draw(name: str, starts: int, seed: int):
    """Float64 start states (NumPy pytree) and per-start policy parameters, drawn once."""
    with jax.enable_x64(True):
        env = build(name, True)
        s0 = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(seed), starts))
        s0 = jax.device_get(s0)
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(starts, env.action_size, env.obs_size)) / np.sqrt(env.obs_size)
    b = rng.normal(size=(starts, env.action_size))
    return s0, {"W": W, "b": b}


def gradient_fn(env, horizon: int, mode: str = "rev"):
    """jit(vmap(grad J)) over (params, start): J = Σ_{t<horizon} r_t, no termination."""
    def policy(p, s, e):
        return jnp.tanh(p["W"] @ env.observe(s) + p["b"])

    def J(p, s):
        r, _ = mg.pathwise_returns(policy, p, env.step, env.reward, jax.tree.map(lambda x: x[None], s),
                                   horizon=horizon)
        return r[0]

    diff = jax.grad(J) if mode == "rev" else jax.jacfwd(J)
    return jax.jit(jax.vmap(diff))


def timed(fn, *args):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, first, time.perf_counter() - t0


def flat(g, n):
    return np.concatenate([np.asarray(g["W"]).reshape(n, -1), np.asarray(g["b"]).reshape(n, -1)], 1).astype(np.float64)


def run_one(name, s0, params, horizon, variant, x64, mode="rev"):
    dtype = np.float64 if x64 else np.float32
    n = len(params["b"])
    env = build(name, x64, variant)
    s = cast_floats(jax.tree.map(jnp.asarray, s0), dtype)
    p = {k: jnp.asarray(v, dtype) for k, v in params.items()}
    g, first, run = timed(gradient_fn(env, horizon, mode), p, s)
    return flat(g, n), first, run


def cosine(a, b):
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-300)


def compare(name, s0, params, horizon, variant):
    """Float32 (x64 off) and float64 gradients of the same starts; returns a result row."""
    jax.config.update("jax_enable_x64", False)
    g32, c32, t32 = run_one(name, s0, params, horizon, variant, False)
    with jax.enable_x64(True):
        g64, c64, t64 = run_one(name, s0, params, horizon, variant, True)
    fin32, fin64 = np.all(np.isfinite(g32), 1), np.all(np.isfinite(g64), 1)
    both = fin32 & fin64
    cos = cosine(g32, g64)
    return {
        "env": name, "variant": variant, "starts": int(len(g32)), "horizon": horizon,
        "f32_finite": int(fin32.sum()), "f64_finite": int(fin64.sum()),
        "median_cos": float(np.median(cos[both])) if both.any() else float("nan"),
        "min_cos": float(np.min(cos[both])) if both.any() else float("nan"),
        "frac_cos_ge_0.99": float(np.mean(cos[both] >= 0.99)) if both.any() else float("nan"),
        "t32_s": t32, "t64_s": t64, "compile32_s": c32 - t32, "compile64_s": c64 - t64,
        "nonfinite_f32": np.where(~fin32)[0].tolist(),
    }, g64


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=64)
    ap.add_argument("--horizon", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--envs", default=",".join(ENVS))
    ap.add_argument("--baseline", action="store_true", help="cart-pole: also the old iterations=1 autodiff step")
    ap.add_argument("--check-forward", action="store_true",
                    help="cart-pole: float64 implicit gradient vs jacfwd of the unmodified converged mjx.step")
    ap.add_argument("--json", default=None, help="write the result rows here")
    args = ap.parse_args(argv)
    rows = []
    print(f"{args.starts} starts x {args.horizon} steps, seed {args.seed}, backend {jax.default_backend()}")
    for name in args.envs.split(","):
        s0, params = draw(name, args.starts, args.seed)
        variants = ["implicit"] + (["autodiff1"] if args.baseline and name == "cartpole" else [])
        for variant in variants:
            row, g64 = compare(name, s0, params, args.horizon, variant)
            if args.check_forward and name == "cartpole" and variant == "implicit":
                with jax.enable_x64(True):
                    gf, _, tf = run_one(name, s0, params, args.horizon, "plain", True, mode="fwd")
                rel = np.linalg.norm(g64 - gf, axis=1) / np.linalg.norm(gf, axis=1)
                row["f64_vs_jacfwd_converged_max_rel_err"] = float(rel.max())
                row["f64_vs_jacfwd_converged_min_cos"] = float(cosine(g64, gf).min())
                row["t64_jacfwd_s"] = tf
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print("| env | step | float32 finite | float64 finite | median cos f32 vs f64 | min cos | grad time f32 / f64 | f64/f32 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['env']} | {r['variant']} | {r['f32_finite']}/{r['starts']} | {r['f64_finite']}/{r['starts']} | "
              f"{r['median_cos']:.6f} | {r['min_cos']:.4f} | {r['t32_s']:.2f} s / {r['t64_s']:.2f} s | "
              f"{r['t64_s'] / r['t32_s']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
