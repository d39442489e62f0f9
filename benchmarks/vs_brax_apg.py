"""Brax's APG against this project's short-horizon actor-critic (SHAC) and BPO, same env, same machine.

One after the other in one process, on the same Brax environment and backend with
the same number of parallel envs:

  apg   ``brax.training.agents.apg.train``: horizon 32, lr 3e-3, its own defaults
        otherwise (Adam (0.7, 0.95), exponential lr decay, gradient clipping at 1,
        4×32 tanh policy), evaluated deterministically on 128 envs
  ppo   ``brax.training.agents.ppo.train`` (only with ``--agents ...,ppo``; the GPU suite runs it)
        at the same env-step budget: unroll 16, 8 minibatches, 4 epochs, lr 3e-4, γ 0.97,
        normalised observations, deterministic evaluation
  shac  ``mbpo_grad.agents.shac`` with per-env settings (``SHAC_SETTINGS``: window, critic-only
        warm-up, actor lr, guard), iterations chosen for the same env steps as APG. Its deterministic
        tanh-MLP policy starts with a zero last layer (action 0), like APG's small-output
        initialisation: with the MLP's default init the first actions saturate at ±1, the
        pendulum falls within 3 steps, no 32-step window survives to its bootstrap and
        the gradient is zero from the start (``--default-init`` shows this)
  bpo   ``shac.bpo_config``: no critic, one whole episode per iteration; iterations
        chosen for the same env-step budget

Each run's wall clock starts when its training call starts, so compilation is
included (it is what a user waits for). Reported: evaluation return against
wall-clock seconds and against training env steps (JSON + PNG), the final
return, and the goal check: SHAC reaches APG's final return in ≤ 1/3 of APG's
wall-clock and ends higher.

Environments: Brax ``inverted_pendulum`` (generalized backend, episode length 200;
reward +1 per step until the pole falls, so the pure pathwise gradient of the
reward is zero and only a critic carries signal: APG and BPO are expected to
fail here, SHAC not) and, with ``--full``, ``halfcheetah`` (positional backend,
episode length 200, 100 updates; APG alone took 989 s here).

    python -m benchmarks.vs_brax_apg                  # inverted pendulum, 200 updates
    python -m benchmarks.vs_brax_apg --full           # + half-cheetah (about half an hour on 2 cores)
    python -m benchmarks.vs_brax_apg --tiny           # smoke run: toy sizes, spring backend, fast XLA compile
"""
from __future__ import annotations

import os
import time
from typing import Dict, List

import jax

from benchmarks import _common as C

NAME = "vs_brax_apg"
SETTINGS = {  # env -> (brax name, backend, episode length, default updates)
    "inverted_pendulum": ("inverted_pendulum", "generalized", 200, 200),
    "halfcheetah": ("halfcheetah", "positional", 200, 100),
}
# SHAC's settings per env (the command line overrides them). Inverted pendulum: +1 per step while
# alive, so the critic carries all the signal: windows of 8 (shorter than an untrained policy's
# ~25-step episodes, so windows reach their bootstrap), 25 critic-only iterations first, actor
# lr 1e-3, and the one-backward-pass guard (compiles faster). Half-cheetah: the SHAC paper's
# window 32 and actor lr 2e-3.
SHAC_SETTINGS = {
    "inverted_pendulum": {"window": 8, "actor_warmup": 25, "actor_lr": 1e-3, "guard": "batch"},
    "halfcheetah": {"window": 32, "actor_warmup": 0, "actor_lr": 2e-3, "guard": "batch"},
}


def run_apg(env_name: str, backend: str, episode_length: int, updates: int, num_envs: int, horizon: int,
            num_evals: int, seed: int, eval_envs: int) -> Dict:
    from brax import envs as brax_envs
    from brax.training.agents.apg import train as apg

    env = brax_envs.get_environment(env_name, backend=backend)
    points: List[Dict] = []
    t0 = time.perf_counter()

    def progress(it, metrics):
        points.append({"wall_s": time.perf_counter() - t0, "update": int(it * round(updates / max(num_evals - 1, 1))),
                       "eval_return": float(metrics["eval/episode_reward"])})
        C.log(f"    apg eval {len(points)}: return {points[-1]['eval_return']:.1f} at {points[-1]['wall_s']:.0f} s")

    apg.train(environment=env, episode_length=episode_length, policy_updates=updates, horizon_length=horizon,
              num_envs=num_envs, num_evals=num_evals, num_eval_envs=eval_envs, learning_rate=3e-3,
              deterministic_eval=True, seed=seed, progress_fn=progress)
    total = time.perf_counter() - t0
    for p in points:
        p["env_steps"] = p["update"] * num_envs * horizon
    return {"agent": "apg", "points": points, "wall_s": total}


def run_ppo(env_name: str, backend: str, episode_length: int, env_steps: int, num_envs: int, num_evals: int,
            seed: int, eval_envs: int, tiny: bool = False) -> Dict:
    """Brax's PPO (``brax.training.agents.ppo.train``) at the same env-step budget: the usual
    Brax settings for small control tasks (unroll 16, 8 minibatches of 64 envs' windows, 4 epochs,
    lr 3e-4, γ 0.97, normalised observations, deterministic evaluation)."""
    from brax import envs as brax_envs
    from brax.training.agents.ppo import train as ppo

    env = brax_envs.get_environment(env_name, backend=backend)
    unroll, minibatches, batch = (4, 2, num_envs) if tiny else (16, 8, 64)
    points: List[Dict] = []
    t0 = time.perf_counter()

    def progress(step, metrics):
        points.append({"wall_s": time.perf_counter() - t0, "env_steps": int(step),
                       "eval_return": float(metrics["eval/episode_reward"])})
        C.log(f"    ppo eval {len(points)}: return {points[-1]['eval_return']:.1f} at {points[-1]['wall_s']:.0f} s")

    ppo.train(environment=env, num_timesteps=env_steps, episode_length=episode_length, num_envs=num_envs,
              unroll_length=unroll, num_minibatches=minibatches, batch_size=batch, num_updates_per_batch=4,
              learning_rate=3e-4, entropy_cost=1e-2, discounting=0.97, normalize_observations=True,
              num_evals=num_evals, num_eval_envs=eval_envs, deterministic_eval=True, seed=seed,
              progress_fn=progress)
    return {"agent": "ppo", "points": points, "wall_s": time.perf_counter() - t0,
            "config": {"unroll_length": unroll, "num_minibatches": minibatches, "batch_size": batch}}


def run_ours(agent_name: str, env_name: str, backend: str, episode_length: int, updates: int, num_envs: int,
             horizon: int, num_evals: int, seed: int, eval_envs: int, zero_last: bool = True,
             overrides: Dict = None, window: int = None) -> Dict:
    from mbpo_grad import envs

    from mbpo_grad.agents import common, shac
    from mbpo_grad.policies.deterministic import deterministic

    t0 = time.perf_counter()
    env = envs.make(f"brax:{env_name}", backend=backend, episode_length=episode_length)
    if agent_name == "shac":
        window = window or horizon
        iterations = max(1, (updates * horizon) // window)  # the same env-step budget as APG
        cfg = shac.SHACConfig(env=f"brax:{env_name}", num_envs=num_envs, horizon=window,
                              episode_length=episode_length, iterations=iterations,
                              eval_every=max(1, iterations // max(num_evals - 1, 1)), eval_envs=eval_envs)
    else:  # bpo: the same env-step budget in whole episodes
        iterations = max(1, (updates * horizon) // episode_length)
        cfg = shac.bpo_config(f"brax:{env_name}", num_envs=num_envs, episode_length=episode_length,
                              iterations=iterations, eval_every=max(1, iterations // max(num_evals - 1, 1)),
                              eval_envs=eval_envs)
    if overrides:
        cfg = cfg.replace(**overrides)
    policy = deterministic(env.obs_size, env.action_size, cfg.actor_hidden, zero_last=zero_last)
    agent = shac.make_agent(cfg, env=env, policy=policy)
    points: List[Dict] = []

    def describe(it, last, ev):
        points.append({"wall_s": time.perf_counter() - t0, "update": it, "eval_return": ev,
                       "env_steps": int(last.get("env_steps", 0))})
        C.log(f"    {agent_name} eval {len(points)}: return {ev:.1f} at {points[-1]['wall_s']:.0f} s")
        return ""

    with open(os.devnull, "w") as devnull:
        _, metrics, evals = common.run(agent, jax.random.PRNGKey(seed), cfg.hparams(), iterations=cfg.iterations,
                                       eval_every=cfg.eval_every, describe=describe, stream=devnull)
    return {"agent": agent_name, "points": points, "wall_s": time.perf_counter() - t0,
            "config": {"iterations": cfg.iterations, "horizon": cfg.horizon, "num_envs": cfg.num_envs,
                       "episode_length": episode_length, "zero_last": zero_last,
                       "actor_lr": cfg.actor_lr, "critic_lr": cfg.critic_lr,
                       "actor_warmup": cfg.actor_warmup, "guard": cfg.guard}}


def goal_check(apg_run: Dict, shac_run: Dict) -> Dict:
    if not apg_run["points"] or not shac_run["points"]:
        return {"goal_met": None}
    apg_final = apg_run["points"][-1]["eval_return"]
    t_apg = apg_run["wall_s"]
    reach = [p["wall_s"] for p in shac_run["points"] if p["eval_return"] >= apg_final]
    t_reach = reach[0] if reach else None
    shac_final = shac_run["points"][-1]["eval_return"]
    met = t_reach is not None and t_reach <= t_apg / 3 and shac_final > apg_final
    return {"apg_final_return": apg_final, "apg_wall_s": t_apg, "shac_final_return": shac_final,
            "shac_wall_s": shac_run["wall_s"], "shac_reaches_apg_final_at_s": t_reach,
            "fraction_of_apg_wall": (t_reach / t_apg) if t_reach is not None else None, "goal_met": met}


def plot(payload: Dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs_done = list(payload["envs"])
    fig, axes = plt.subplots(len(envs_done), 2, figsize=(10, 3.6 * len(envs_done)), squeeze=False)
    for row, env_name in enumerate(envs_done):
        for run in payload["envs"][env_name]["runs"]:
            pts = run["points"]
            if not pts:
                continue
            axes[row, 0].plot([p["wall_s"] for p in pts], [p["eval_return"] for p in pts], "o-", label=run["agent"])
            axes[row, 1].plot([p["env_steps"] for p in pts], [p["eval_return"] for p in pts], "o-", label=run["agent"])
        axes[row, 0].set_xlabel("wall-clock seconds (compile included)")
        axes[row, 1].set_xlabel("training env steps")
        for ax in axes[row]:
            ax.set_ylabel("evaluation return")
            ax.set_title(env_name)
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> Dict:
    p = C.parser(NAME, __doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="also half-cheetah (positional), 100 updates")
    p.add_argument("--envs", default=None, help=f"comma-separated subset of {','.join(SETTINGS)}")
    p.add_argument("--agents", default=None,
                   help="comma-separated subset of apg,ppo,shac,bpo (default apg,shac,bpo; --tiny: apg,shac)")
    p.add_argument("--updates", type=int, default=None, help="APG updates = SHAC iterations (default per env)")
    p.add_argument("--num-envs", type=int, default=64, help="parallel envs for every agent (default 64)")
    p.add_argument("--num-evals", type=int, default=11, help="evaluations per run, incl. APG's initial one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--actor-lr", type=float, default=None, help="override our agents' actor learning rate")
    p.add_argument("--shac-window", type=int, default=None,
                   help="SHAC's window n (default per env, SHAC_SETTINGS); iterations scale to the same env steps")
    p.add_argument("--actor-warmup", type=int, default=None,
                   help="SHAC only: first iterations train the critic only (SHACConfig.actor_warmup)")
    p.add_argument("--shac-guard", choices=("per_env", "batch"), default=None,
                   help="SHAC only: SHACConfig.guard (batch: one backward pass, cheaper to compile and run)")
    p.add_argument("--default-init", action="store_true",
                   help="our agents' policy with the MLP's default last-layer init instead of a zero one")
    p.add_argument("--backend", default=None, choices=("generalized", "positional", "spring", "mjx"),
                   help="Brax backend for every env (default per env: SETTINGS)")
    p.add_argument("--png", default=None, help="plot path (default: next to the JSON, .png)")
    args = p.parse_args(argv)
    if args.tiny:  # a smoke run is compile-bound: lower XLA's CPU code-generation effort
        from experiments.rundir import cpu_fast_compile

        cpu_fast_compile()
    names = args.envs.split(",") if args.envs else (list(SETTINGS) if args.full else ["inverted_pendulum"])
    agents = (args.agents or ("apg,shac" if args.tiny else "apg,shac,bpo")).split(",")
    for a in agents:
        if a not in ("apg", "ppo", "shac", "bpo"):
            p.error(f"--agents: unknown agent {a!r}")
    horizon, num_envs, num_evals, eval_envs = 32, args.num_envs, args.num_evals, 128
    payload = {"benchmark": NAME, "machine": C.machine(), "envs": {}}
    png = args.png or os.path.splitext(args.out)[0] + ".png"
    for name in names:
        if name not in SETTINGS:
            p.error(f"--envs: unknown env {name!r}; expected from {list(SETTINGS)}")
        brax_name, backend, episode_length, updates = SETTINGS[name]
        backend = args.backend or ("spring" if args.tiny else backend)  # tiny: the cheapest backend to compile
        updates = args.updates or updates
        if args.tiny:
            updates, num_envs, num_evals, eval_envs, episode_length, horizon = 2, 4, 2, 4, 16, 8
        entry = {"backend": backend, "episode_length": episode_length, "updates": updates, "num_envs": num_envs,
                 "horizon": horizon, "runs": []}
        payload["envs"][name] = entry
        for a in agents:
            C.log(f"  {name}: {a}")
            if a == "apg":
                run = run_apg(brax_name, backend, episode_length, updates, num_envs, horizon, num_evals, args.seed,
                              eval_envs)
            elif a == "ppo":
                run = run_ppo(brax_name, backend, episode_length, updates * num_envs * horizon, num_envs, num_evals,
                              args.seed, eval_envs, tiny=args.tiny)
            else:
                window, overrides = None, {}
                if a == "shac":
                    shac_set = dict(SHAC_SETTINGS[name])
                    window = args.shac_window or shac_set.pop("window")
                    shac_set.pop("window", None)
                    overrides.update(shac_set)
                    if args.actor_warmup is not None:
                        overrides["actor_warmup"] = args.actor_warmup
                    if args.shac_guard is not None:
                        overrides["guard"] = args.shac_guard
                if args.actor_lr:
                    overrides["actor_lr"] = args.actor_lr
                if args.tiny:
                    window, overrides["actor_warmup"] = min(window or horizon, horizon), 0
                run = run_ours(a, brax_name, backend, episode_length, updates, num_envs, horizon, num_evals,
                               args.seed, eval_envs, zero_last=not args.default_init, overrides=overrides or None,
                               window=window)
            entry["runs"].append(run)
            C.write_json(args.out, payload)
        runs = {r["agent"]: r for r in entry["runs"]}
        if "apg" in runs and "shac" in runs:
            entry["goal"] = goal_check(runs["apg"], runs["shac"])
        C.write_json(args.out, payload)
        plot(payload, png)
    rows = []
    for name, entry in payload["envs"].items():
        for run in entry["runs"]:
            pts = run["points"]
            rows.append({"env": name, "agent": run["agent"], "wall_s": run["wall_s"],
                         "env_steps": pts[-1]["env_steps"] if pts else 0,
                         "final_return": pts[-1]["eval_return"] if pts else float("nan"),
                         "best_return": max(p["eval_return"] for p in pts) if pts else float("nan")})
    payload["markdown"] = C.markdown_table(rows, ["env", "agent", "wall_s", "env_steps", "final_return", "best_return"],
                                           {"wall_s": ".0f", "final_return": ".1f", "best_return": ".1f"})
    payload["png"] = png
    C.write_json(args.out, payload)
    print(payload["markdown"])
    return payload


if __name__ == "__main__":
    main()
