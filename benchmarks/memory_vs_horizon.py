"""Peak memory of the pathwise gradient against the horizon, with and without rematerialisation.

For each environment, horizon n and ``remat`` mode, ``jax.grad`` of
``mg.pathwise_objective`` (64 envs, the 64-64 MLP policy of ``reverse_mode_ratio``)
is lowered and compiled, and XLA's own buffer assignment is read from
``compiled.memory_analysis()``: ``temp`` (scratch: the saved residuals of the
backward pass live here), ``argument`` and ``output`` bytes. ``peak`` is
argument + output + temp − alias, the bytes the executable holds at once. This is
deterministic (no process RSS, no allocator noise) and needs no run; on CPU
jax 0.9.2 reports these fields (its ``peak_memory_in_bytes`` there is only
argument + output, so it is not used).

remat modes (``mg.pathwise_objective(..., remat=...)``):
  none    False: every step's intermediates are kept, O(n · |step intermediates|)
  true    True: ``jax.checkpoint`` per step, O(n · |state|)
  dots    per-step checkpoint saving only matmul outputs (a ``jax.checkpoint_policies`` policy)
  nested  "nested": checkpointed segments of ceil(√n) steps, O(√n · |state|)

Goal (issue 8): with remat, memory at n = 1000 ≤ 4 × memory at n = 32.

    python -m benchmarks.memory_vs_horizon           # cart-pole all modes; Brax n = 32, 1000 (true, nested)
    python -m benchmarks.memory_vs_horizon --full    # Brax at every horizon and mode (many slow compiles)

The batch axis (issue 16: how many parallel envs fit): ``--batches 256,1024,4096`` measures each
(horizon, mode) at every env count; the memory of the window gradient is linear in the env count
(every env's residuals are kept), so a GPU's memory divided by the per-env figure is the largest
batch that fits, and remat divides the per-env figure.
"""
from __future__ import annotations

from typing import Dict

import jax

from benchmarks import _common as C
from benchmarks.reverse_mode_ratio import engine_objective, make_env
from mbpo_grad.policies.deterministic import deterministic

NAME = "memory_vs_horizon"
HORIZONS = (32, 128, 512, 1000)
MODES = {"none": False, "true": True, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
         "nested": "nested"}
ENV_NAMES = ("cartpole", "brax_inverted_pendulum", "mjx_inverted_pendulum", "brax_halfcheetah")
DEFAULT_PLAN = {
    "cartpole": (HORIZONS, tuple(MODES)),
    "brax_inverted_pendulum": ((32, 1000), ("true", "nested")),
}


def measure(env, horizon: int, mode: str, batch: int, time_it: bool) -> Dict:
    pol = deterministic(env.obs_size, env.action_size, hidden=(64, 64))
    params = pol.init(jax.random.PRNGKey(0))
    states = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(1), batch))
    grad = jax.grad(engine_objective(pol, env, horizon, remat=MODES[mode]))
    compiled, compile_s = C.compile_timed(grad, params, states)
    m = compiled.memory_analysis()
    row = {"horizon": horizon, "remat": mode, "batch": batch, "compile_s": compile_s}
    if m is None:
        row["memory_analysis"] = None
        return row
    row.update(temp_bytes=int(m.temp_size_in_bytes), argument_bytes=int(m.argument_size_in_bytes),
               output_bytes=int(m.output_size_in_bytes), alias_bytes=int(m.alias_size_in_bytes))
    row["peak_bytes"] = row["temp_bytes"] + row["argument_bytes"] + row["output_bytes"] - row["alias_bytes"]
    row["state_bytes_per_env"] = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(states)) // batch
    if time_it:
        times = C.interleaved({"g": lambda: compiled(params, states)}, 3, min_total_s=2.0, max_repeats=50)
        row["grad_s"] = C.median(times["g"])
    return row


def summarise(rows):
    """Per (env, mode): peak(n_max)/peak(n_min) and temp(n_max)/temp(n_min), and whether ≤ 4×."""
    out = []
    keys = sorted({(r["env"], r["remat"]) for r in rows if "peak_bytes" in r})
    for env, mode in keys:
        rs = sorted((r for r in rows if r["env"] == env and r["remat"] == mode and "peak_bytes" in r),
                    key=lambda r: r["horizon"])
        if len(rs) < 2:
            continue
        lo, hi = rs[0], rs[-1]
        peak_ratio = hi["peak_bytes"] / lo["peak_bytes"]
        temp_ratio = hi["temp_bytes"] / lo["temp_bytes"]
        out.append({"env": env, "remat": mode, "n_small": lo["horizon"], "n_large": hi["horizon"],
                    "peak_ratio": peak_ratio, "temp_ratio": temp_ratio,
                    "goal_met_peak": mode != "none" and hi["horizon"] >= 1000 and lo["horizon"] <= 32 and peak_ratio <= 4.0,
                    "goal_met_temp": mode != "none" and hi["horizon"] >= 1000 and lo["horizon"] <= 32 and temp_ratio <= 4.0})
    return out


def main(argv=None) -> Dict:
    p = C.parser(NAME, __doc__.split("\n")[0])
    p.add_argument("--envs", default=None, help=f"comma-separated subset of {','.join(ENV_NAMES)}")
    p.add_argument("--horizons", default=None, help=f"comma-separated horizons (default {HORIZONS}; Brax 32,1000)")
    p.add_argument("--modes", default=None, help=f"comma-separated remat modes from {list(MODES)}")
    p.add_argument("--full", action="store_true", help="every chosen env at every horizon and mode")
    p.add_argument("--batch", type=int, default=64, help="parallel envs (default 64)")
    p.add_argument("--batches", default=None,
                   help="comma-separated env counts: the batch axis (each horizon and mode at every count; "
                        "e.g. --envs brax_halfcheetah --horizons 32 --batches 256,1024,4096 --no-time)")
    p.add_argument("--no-time", action="store_true", help="skip timing the cart-pole gradients")
    args = p.parse_args(argv)
    names = args.envs.split(",") if args.envs else (list(DEFAULT_PLAN) if not args.full else
                                                    ["cartpole", "brax_inverted_pendulum"])
    for n in names:
        if n not in ENV_NAMES:
            p.error(f"--envs: unknown env {n!r}; expected from {ENV_NAMES}")
    modes = args.modes.split(",") if args.modes else None
    for m in modes or ():
        if m not in MODES:
            p.error(f"--modes: unknown remat mode {m!r}; expected from {list(MODES)}")
    horizons = tuple(int(h) for h in args.horizons.split(",")) if args.horizons else None
    batches = tuple(int(b) for b in args.batches.split(",")) if args.batches else (args.batch,)
    if any(b < 1 for b in batches):
        p.error(f"--batches: env counts must be >= 1, got {args.batches}")
    plan = {}
    for n in names:
        hs, ms = DEFAULT_PLAN.get(n, (HORIZONS, tuple(MODES)))
        if args.full:
            hs, ms = HORIZONS, tuple(MODES)
        plan[n] = (horizons or hs, tuple(modes) if modes else ms)
    if args.tiny:
        plan = {n: ((4, 16), ("nested",)) for n in (args.envs.split(",") if args.envs else ["cartpole"])}
        batches = (4, 8) if args.batches else (4,)
    payload = {"benchmark": NAME, "machine": C.machine(), "rows": []}
    for name, (hs, ms) in plan.items():
        env = make_env(name)
        for mode in ms:
            for n in hs:
                for batch in batches:
                    row = dict(env=name, **measure(env, n, mode, batch, time_it=(
                        name == "cartpole" and not args.no_time and not args.tiny)))
                    payload["rows"].append(row)
                    C.log(f"  {name} remat={mode} n={n} batch={batch}: peak {row.get('peak_bytes', 0) / 2**20:.2f} MiB "
                          f"(temp {row.get('temp_bytes', 0) / 2**20:.2f} MiB), compile {row['compile_s']:.1f} s")
                    payload["summary"] = summarise([r for r in payload["rows"] if r["batch"] == batches[0]])
                    C.write_json(args.out, payload)
    table = [dict(r, **{"peak MiB": r.get("peak_bytes", float("nan")) / 2**20,
                        "temp MiB": r.get("temp_bytes", float("nan")) / 2**20,
                        "grad ms": 1e3 * r["grad_s"] if "grad_s" in r else ""}) for r in payload["rows"]]
    md = C.markdown_table(table, ["env", "remat", "horizon", "batch", "peak MiB", "temp MiB", "grad ms", "compile_s"],
                          {"peak MiB": ".3f", "temp MiB": ".3f", "compile_s": ".1f"})
    md += "\n\n" + C.markdown_table(payload["summary"], ["env", "remat", "n_small", "n_large", "peak_ratio",
                                                         "temp_ratio", "goal_met_peak", "goal_met_temp"],
                                    {"peak_ratio": ".2f", "temp_ratio": ".2f"})
    payload["markdown"] = md
    C.write_json(args.out, payload)
    print(md)
    return payload


if __name__ == "__main__":
    main()
