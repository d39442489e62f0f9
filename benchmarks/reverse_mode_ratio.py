"""Reverse-mode cost: wall time of ∇J_n over wall time of J_n, engine vs a bare hand-written scan.

For each environment and horizon n, four compiled programs on the same batch of
start states and the same deterministic MLP policy (64-64, tanh):

  engine forward   J_n = mg.pathwise_objective(policy, params, step, reward, states, horizon=n)
  engine gradient  jax.grad of it w.r.t. the policy parameters
  bare forward     mean_b Σ_t r_t from a hand-written ``lax.scan`` (policy → step → reward),
                   vmapped over the batch; no masks, no trajectory, nothing else
  bare gradient    jax.grad of that

Reported per (env, n): compile seconds, median seconds per call (interleaved rounds
after a warm-up call, each sample long enough that short and long programs see the
same scheduler share; see ``benchmarks._common.interleaved``), gradient/forward
ratio for each, the engine's overhead (engine gradient / bare gradient, and forward
likewise) and gradient env-steps/s. Every ratio is also given in process CPU time
(``*_cpu``: all threads), which a loaded, shared machine disturbs less than wall time.
The engine runs without ``done`` (the bare scan has no termination either), so
the two compute the same numbers; ``--done`` adds the env's termination mask to
the engine for a look at what the mask costs. ``--remat`` adds engine gradients
with rematerialisation (``True``, ``nested`` or ``dots`` = save only matmul
outputs) as extra timed variants.

Environments: ``cartpole`` (analytic), ``brax_inverted_pendulum`` (Brax,
generalized backend, with the smooth reward cos θ' − 0.01‖a‖² because Brax's own
reward is a constant +1 while alive, whose gradient XLA would prune to nothing),
``brax_halfcheetah`` (positional backend, Brax's own reward) and
``mjx_inverted_pendulum`` (``envs.mjx_adapter``'s builtin cart-pole, float32,
one solver iteration); ``cartpole_scan_substeps`` (only when asked for) is cart-pole with its
4 integration sub-steps in an inner ``lax.scan`` (as the env had them before it unrolled
them), to show what that inner loop costs reverse mode.

    python -m benchmarks.reverse_mode_ratio            # cart-pole n = 8, 32, 128; Brax pendulum, MJX n = 32
    python -m benchmarks.reverse_mode_ratio --full     # every env at n = 8, 32, 128
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mbpo_grad import envs

import mbpo_grad as mg
from benchmarks import _common as C
from mbpo_grad.policies.base import as_engine_policy
from mbpo_grad.policies.deterministic import deterministic

NAME = "reverse_mode_ratio"
ENV_NAMES = ("cartpole", "brax_inverted_pendulum", "mjx_inverted_pendulum", "brax_halfcheetah", "cartpole_scan_substeps")
DEFAULT_HORIZONS = {  # the default run fits in 10 minutes on a loaded 2-core CPU
    "cartpole": (8, 32, 128),
    "brax_inverted_pendulum": (32,),
    "mjx_inverted_pendulum": (32,),
    "brax_halfcheetah": (),
    "cartpole_scan_substeps": (),
}
FULL_HORIZONS = (8, 32, 128)
REMAT = {"true": True, "nested": "nested", "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def _cartpole_scan_substeps():
    """``envs.make("cartpole")`` as it was before: its 4 integration sub-steps in an inner
    ``lax.scan`` (the env now unrolls them; the same arithmetic). Kept to show what the inner
    loop costs reverse mode."""
    from mbpo_grad.envs import cartpole as cp

    base = envs.make("cartpole")

    def step(state, action, xi=None):
        del xi
        force = cp.MAX_FORCE * jnp.reshape(action, ())
        h = cp.DT / cp.SUBSTEPS

        def sub(s, _):
            x_acc, theta_acc = cp._accelerations(s, force)
            x_dot = s[1] + h * x_acc
            theta_dot = s[3] + h * theta_acc
            return jnp.stack([s[0] + h * x_dot, x_dot, s[2] + h * theta_dot, theta_dot]), None

        return lax.scan(sub, state, None, length=cp.SUBSTEPS)[0]

    return dataclasses.replace(base, name="cartpole_scan_substeps", step=step)


def make_env(name: str):
    """The environment, as used in every benchmark that names it."""
    if name == "cartpole":
        return envs.make("cartpole")
    if name == "cartpole_scan_substeps":
        return _cartpole_scan_substeps()
    if name == "brax_inverted_pendulum":
        return envs.make("brax:inverted_pendulum_smooth", backend="generalized")  # cos θ' − 0.01‖a‖²
    if name == "brax_halfcheetah":
        return envs.make("brax:halfcheetah", backend="positional")
    if name == "mjx_inverted_pendulum":
        return envs.make("mjx:inverted_pendulum")
    raise ValueError(f"env: unknown benchmark environment {name!r}; expected one of {ENV_NAMES}")


def _reward_fn(reward):
    if getattr(reward, "uses_next_state", False):
        return lambda s, a, s2: reward(s, a, s2)
    return lambda s, a, s2: reward(s, a)


def bare_objective(pol, env, horizon: int):
    """mean_b Σ_{t<n} r_t by a plain ``lax.scan``: the reference the engine is measured against."""
    reward = _reward_fn(env.reward)

    def one(params, s0):
        def body(s, _):
            a = pol.sample(params, env.observe(s), None)
            s2 = env.step(s, a, None)
            return s2, reward(s, a, s2)

        _, rewards = lax.scan(body, s0, None, length=horizon)
        return jnp.sum(rewards)

    return lambda params, states: jnp.mean(jax.vmap(one, in_axes=(None, 0))(params, states))


def engine_objective(pol, env, horizon: int, done: bool = False, remat: Any = False):
    policy = as_engine_policy(pol, env.observe)
    kw = dict(horizon=horizon, done=env.done if done else None, remat=remat)
    return lambda params, states: mg.pathwise_objective(policy, params, env.step, env.reward, states, **kw)


def bench_one(env_name: str, env, horizon: int, batch: int, repeats: int, done: bool, remats: List[str],
              min_total_s: float = 3.0) -> Dict:
    pol = deterministic(env.obs_size, env.action_size, hidden=(64, 64))
    params = pol.init(jax.random.PRNGKey(0))
    states = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(1), batch))
    programs = {
        "engine_fwd": engine_objective(pol, env, horizon, done),
        "engine_grad": jax.grad(engine_objective(pol, env, horizon, done)),
        "bare_fwd": bare_objective(pol, env, horizon),
        "bare_grad": jax.grad(bare_objective(pol, env, horizon)),
    }
    for r in remats:
        programs[f"engine_grad_remat_{r}"] = jax.grad(engine_objective(pol, env, horizon, done, REMAT[r]))
    compiled, compile_s = {}, {}
    for k, f in programs.items():
        compiled[k], compile_s[k] = C.compile_timed(f, params, states)
        C.log(f"  {env_name} n={horizon}: compiled {k} in {compile_s[k]:.1f} s")
    # Same numbers from both programs (a check that the comparison is fair).
    v_eng, v_bare = float(compiled["engine_fwd"](params, states)), float(compiled["bare_fwd"](params, states))
    g_eng, g_bare = compiled["engine_grad"](params, states), compiled["bare_grad"](params, states)
    g_diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(g_eng),
                                                                 jax.tree_util.tree_leaves(g_bare)))
    g_scale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree_util.tree_leaves(g_bare))
    cpu: Dict[str, List[float]] = {}
    times = C.interleaved({k: (lambda c=c: c(params, states)) for k, c in compiled.items()}, repeats,
                          min_total_s=min_total_s, cpu=cpu)
    med = {k: C.median(v) for k, v in times.items()}
    row = {
        "env": env_name, "horizon": horizon, "batch": batch, "repeats": len(times["engine_fwd"]), "engine_done": done,
        "compile_s": compile_s, "median_s": med, "times_s": times,
        "engine_ratio": C.median_ratio(times["engine_grad"], times["engine_fwd"]),
        "bare_ratio": C.median_ratio(times["bare_grad"], times["bare_fwd"]),
        "engine_over_bare_grad": C.median_ratio(times["engine_grad"], times["bare_grad"]),
        "engine_over_bare_fwd": C.median_ratio(times["engine_fwd"], times["bare_fwd"]),
        "cpu_median_s": {k: C.median(v) for k, v in cpu.items()},
        "engine_ratio_cpu": C.median_ratio(cpu["engine_grad"], cpu["engine_fwd"]),
        "bare_ratio_cpu": C.median_ratio(cpu["bare_grad"], cpu["bare_fwd"]),
        "engine_over_bare_grad_cpu": C.median_ratio(cpu["engine_grad"], cpu["bare_grad"]),
        "fwd_env_steps_per_s": batch * horizon / med["bare_fwd"],
        "grad_env_steps_per_s": batch * horizon / med["engine_grad"],
        "value_engine": v_eng, "value_bare": v_bare,
        "grad_max_abs_diff": g_diff, "grad_max_abs": g_scale,
        "grad_finite": bool(all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(g_eng))),
    }
    for r in remats:
        row[f"remat_{r}_over_bare_grad"] = C.median_ratio(times[f"engine_grad_remat_{r}"], times["bare_grad"])
        row[f"remat_{r}_over_bare_grad_cpu"] = C.median_ratio(cpu[f"engine_grad_remat_{r}"], cpu["bare_grad"])
    return row


def main(argv=None) -> Dict:
    p = C.parser(NAME, __doc__.split("\n")[0])
    p.add_argument("--envs", default=None, help=f"comma-separated subset of {','.join(ENV_NAMES)}")
    p.add_argument("--horizons", default=None, help="comma-separated horizons for every chosen env "
                   "(default: cartpole 8,32,128; Brax inverted pendulum and MJX 32; half-cheetah only with --full)")
    p.add_argument("--full", action="store_true", help="every env at n = 8, 32, 128 (half-cheetah compiles take minutes)")
    p.add_argument("--batch", type=int, default=64, help="parallel envs (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds after the warm-up, at least "
                   "(default 5; more, up to 200, for fast programs so that the rounds take ~3 s)")
    p.add_argument("--done", action="store_true", help="give the engine the env's done mask")
    p.add_argument("--remat", default="", help=f"comma-separated extra engine-gradient variants from {sorted(REMAT)}")
    args = p.parse_args(argv)
    names = args.envs.split(",") if args.envs else list(ENV_NAMES)
    for n in names:
        if n not in ENV_NAMES:
            p.error(f"--envs: unknown env {n!r}; expected from {ENV_NAMES}")
    remats = [r for r in args.remat.split(",") if r]
    for r in remats:
        if r not in REMAT:
            p.error(f"--remat: unknown variant {r!r}; expected from {sorted(REMAT)}")
    if args.tiny:
        names, batch, repeats = (args.envs.split(",") if args.envs else ["cartpole"]), 4, 1
        plan = {n: (4,) for n in names}
    else:
        batch, repeats = args.batch, args.repeats
        if args.horizons:
            hs = tuple(int(h) for h in args.horizons.split(","))
            plan = {n: hs for n in names}
        else:
            plan = {n: (FULL_HORIZONS if args.full else DEFAULT_HORIZONS[n]) for n in names}
    payload = {"benchmark": NAME, "machine": C.machine(), "rows": []}
    for name, horizons in plan.items():
        if not horizons:
            continue
        env = make_env(name)
        for n in horizons:
            row = bench_one(name, env, n, batch, repeats, args.done, remats, 0.0 if args.tiny else 3.0)
            payload["rows"].append(row)
            C.write_json(args.out, payload)  # partial results survive an interrupted run
            C.log(f"  {name} n={n}: grad/fwd engine {row['engine_ratio']:.2f}, bare {row['bare_ratio']:.2f}, "
                  f"engine/bare grad {row['engine_over_bare_grad']:.3f}")
    table = [dict(r, **{"engine fwd ms": 1e3 * r["median_s"]["engine_fwd"],
                        "engine grad ms": 1e3 * r["median_s"]["engine_grad"],
                        "bare fwd ms": 1e3 * r["median_s"]["bare_fwd"],
                        "bare grad ms": 1e3 * r["median_s"]["bare_grad"]}) for r in payload["rows"]]
    cols = ["env", "horizon", "batch", "engine fwd ms", "engine grad ms", "engine_ratio", "engine_ratio_cpu",
            "bare fwd ms", "bare grad ms", "bare_ratio", "bare_ratio_cpu", "engine_over_bare_grad",
            "engine_over_bare_grad_cpu", "grad_env_steps_per_s"]
    cols += [f"remat_{r}_over_bare_grad{c}" for r in remats for c in ("", "_cpu")]
    payload["markdown"] = C.markdown_table(table, cols)
    C.write_json(args.out, payload)
    print(payload["markdown"])
    return payload


if __name__ == "__main__":
    main()
