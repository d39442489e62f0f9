"""Seeds as one vmapped program vs one after the other: env steps per second (cart-pole SHAC).

The run: the short-horizon actor-critic (``mbpo_grad.agents.shac``) on cart-pole,
``--iterations`` updates of ``num_envs`` × ``horizon`` env steps each, one
evaluation at the end. Its pure form ``shac.make_sweep_fn(config)`` is run

  vmapped      K seeds in ONE compiled program: ``mg.sweep(fn, seeds=K)`` (jit of vmap);
               the first call compiles (timed apart), the second is timed
  sequential   the one-seed program (``mg.sweep(fn, seeds=[s])``, compiled once), called
               for one seed after another

Throughput = training env steps (the agent's own ``env_steps`` counter, summed over
seeds; evaluation steps not counted) / wall seconds (median over rounds), compile
excluded; ``speedup_cpu``
is the same ratio in process CPU seconds (less disturbed by other load on a shared
machine; it understates the wall speedup when the batched program uses both cores). Sequential
time for K seeds is K × the median time of one run; the one-seed runs are timed in
``--rounds`` rounds alternating with the vmapped run (``--seq-runs`` per round), so both
see the same load, and extrapolated to K: the same compiled program runs K times with
nothing shared between runs, so this is what K sequential runs cost (flagged in the
JSON as ``sequential_extrapolated`` when fewer than K runs were timed).

Goal (issue 8): ≥ 5× throughput at K = 16 over sequential on a 2-core CPU
(≥ 50× at K = 256 on a GPU).

    python -m benchmarks.sweep_throughput                  # K = 1, 4, 16, 64
    python -m benchmarks.sweep_throughput --ks 1,4,16 --iterations 20
"""
from __future__ import annotations

import time
from typing import Dict

import numpy as np

import mbpo_grad as mg
from benchmarks import _common as C
from mbpo_grad.agents import shac

NAME = "sweep_throughput"


def main(argv=None) -> Dict:
    p = C.parser(NAME, __doc__.split("\n")[0])
    p.add_argument("--ks", default="1,4,16,64", help="comma-separated numbers of seeds (default 1,4,16,64)")
    p.add_argument("--iterations", type=int, default=30, help="SHAC updates per run (default 30)")
    p.add_argument("--num-envs", type=int, default=32, help="parallel envs per run (default 32)")
    p.add_argument("--horizon", type=int, default=32, help="SHAC window (default 32)")
    p.add_argument("--seq-runs", type=int, default=2, help="sequential runs per round (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per K (default 3)")
    args = p.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    its, num_envs, horizon, seq_runs, rounds = args.iterations, args.num_envs, args.horizon, args.seq_runs, args.rounds
    eval_envs, episode_length = 32, None
    if args.tiny:
        ks, its, num_envs, horizon, seq_runs, rounds, eval_envs, episode_length = [1, 3], 2, 4, 4, 1, 1, 2, 8
    cfg = shac.SHACConfig(env="cartpole", num_envs=num_envs, horizon=horizon, iterations=its, eval_every=its,
                          eval_envs=eval_envs, episode_length=episode_length,
                          critic_minibatches=min(4, num_envs * horizon))
    fn = shac.make_sweep_fn(cfg)
    payload = {"benchmark": NAME, "machine": C.machine(), "config": {
        "env": cfg.env, "num_envs": num_envs, "horizon": horizon, "iterations": its}, "rows": []}

    # ---- the one-seed program (mg.sweep with seeds=[s], compiled once), for the sequential runs
    t0 = time.perf_counter()
    mg.sweep(fn, seeds=np.array([999], np.int32))  # compile + warm-up
    seq_compile = time.perf_counter() - t0
    seq_all = []

    def one_seed(s):
        c0, t0 = time.process_time(), time.perf_counter()
        out = mg.sweep(fn, seeds=np.array([s], np.int32))
        return time.perf_counter() - t0, time.process_time() - c0, float(np.asarray(out["eval_env_steps"])[..., -1].sum())

    # ---- per K: the vmapped program (compiled on its first call), then alternating rounds of
    # [seq_runs sequential one-seed runs, one vmapped K-seed run] so both see the same load
    for k in ks:
        seeds = np.arange(k, dtype=np.int32) + 2000
        t0 = time.perf_counter()
        mg.sweep(fn, seeds=seeds)  # compiles (cached per fn and batch shape) and runs once
        first = time.perf_counter() - t0
        seq, vm = [], []
        for r in range(rounds):
            seq += [one_seed(1000 + 100 * k + r * seq_runs + i) for i in range(seq_runs)]
            c0, t0 = time.process_time(), time.perf_counter()
            out = mg.sweep(fn, seeds=seeds)
            vm.append((time.perf_counter() - t0, time.process_time() - c0,
                       float(np.sum(np.asarray(out["eval_env_steps"])[..., -1]))))
        seq_all += seq
        t_run, c_run = C.median([x[0] for x in seq]), C.median([x[1] for x in seq])
        steps_run = float(np.mean([x[2] for x in seq]))
        t_vm, c_vm, steps = C.median([x[0] for x in vm]), C.median([x[1] for x in vm]), vm[-1][2]
        vm_sps, seq_sps = steps / t_vm, steps_run / t_run
        row = {"K": k, "rounds": rounds, "vmapped_run_s": t_vm, "vmapped_first_call_s": first,
               "vmapped_compile_s_approx": first - t_vm,
               "env_steps": steps, "vmapped_env_steps_per_s": vm_sps,
               "sequential_run_s": t_run, "sequential_s": k * t_run, "sequential_env_steps_per_s": seq_sps,
               "sequential_runs_timed": len(seq), "sequential_extrapolated": k > len(seq),
               "speedup": vm_sps / seq_sps,
               "vmapped_cpu_s": c_vm, "sequential_cpu_s": k * c_run,
               "speedup_cpu": (steps / c_vm) / (steps_run / c_run),
               "final_return_mean": float(np.mean(np.asarray(out["final_return"])))}
        payload["rows"].append(row)
        C.write_json(args.out, payload)
        C.log(f"  K={k}: vmapped {t_vm:.2f} s ({vm_sps:.0f} env steps/s), sequential {k * t_run:.2f} s "
              f"({seq_sps:.0f} env steps/s) -> {row['speedup']:.2f}x (CPU time {row['speedup_cpu']:.2f}x)")
    payload["sequential"] = {"first_call_s": seq_compile, "run_s": [x[0] for x in seq_all],
                             "cpu_s": [x[1] for x in seq_all], "env_steps_per_run": float(np.mean([x[2] for x in seq_all])),
                             "median_run_s": C.median([x[0] for x in seq_all])}
    payload["goal"] = "speedup >= 5 at K = 16 (2-core CPU)"
    k16 = [r for r in payload["rows"] if r["K"] == 16]
    payload["goal_met"] = bool(k16 and k16[0]["speedup"] >= 5.0) if k16 else None
    payload["markdown"] = C.markdown_table(payload["rows"], [
        "K", "env_steps", "vmapped_run_s", "vmapped_env_steps_per_s", "sequential_s", "sequential_env_steps_per_s",
        "speedup", "speedup_cpu", "sequential_extrapolated"], {
            "env_steps": ".0f", "vmapped_env_steps_per_s": ".0f", "sequential_env_steps_per_s": ".0f",
            "speedup": ".2f", "speedup_cpu": ".2f"})
    C.write_json(args.out, payload)
    print(payload["markdown"])
    return payload


if __name__ == "__main__":
    main()
