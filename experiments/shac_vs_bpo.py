"""Short-horizon actor-critic (SHAC) vs backprop policy optimisation (BPO) at equal env steps.

    python -m experiments.shac_vs_bpo                       # cart-pole, seeds 0 and 1, ~2 min on 2 cores
    python -m experiments.shac_vs_bpo --env pendulum --seeds 4 --out runs/svb
    python -m experiments.shac_vs_bpo --tiny --out /tmp/svb   # smoke run: seconds on 2 CPU cores

* SHAC: windows of ``--n`` steps (default 32) of ``--num-envs`` envs, a value critic
  bootstrapping the window's tail, TD(λ) critic targets (``agents.shac`` defaults).
* BPO: the same pathwise engine and actor, no critic, ``horizon = episode_length``: each
  iteration backpropagates through whole 200-step episodes of ``--bpo-num-envs`` envs from
  reset (the "curse of horizon": gradients through long chaotic rollouts explode or vanish).

BPO runs for as many iterations as it takes to use at least the environment steps SHAC used
(so any difference is not BPO being starved of data). Both are evaluated with the
deterministic policy on fresh episodes during training; the script prints each seed's final
evaluation returns and the means, and writes ``shac_vs_bpo.json`` (configs, env-step axes,
evaluation curves [seeds, evals], finals, wall times) and ``shac_vs_bpo.png`` (evaluation
return vs environment steps, mean ± range over seeds) into the run folder.

``--tiny`` (a smoke configuration for tests, ``PRESETS["tiny"]``) runs both arms on 2 vmapped
seeds: SHAC for 4 iterations of 4 envs × 8-step windows with one critic step, then BPO through
whole episodes of 2 envs until it has SHAC's env steps, (8,)-wide MLPs and 2 evaluation
episodes: the same JSON and PNG in seconds, far from trained. Explicit options override it.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments import rundir
from mbpo_grad.agents import shac

ENVS = ("cartpole", "pendulum")

# run sizes of the CLI; ``overrides`` go into both agents' configs
PRESETS = {
    "default": dict(seeds=2, n=32, num_envs=32, iterations=400, bpo_num_envs=8, overrides=None),
    # tiny: both arms, 2 vmapped seeds, JSON and PNG; nearly all compilation
    "tiny": dict(seeds=2, n=8, num_envs=4, iterations=4, bpo_num_envs=2,
                 overrides=dict(actor_hidden=(8,), critic_hidden=(8,), critic_iterations=1, critic_minibatches=1,
                                eval_envs=2)),
}


def _run(config: shac.SHACConfig, seeds: Sequence[int]) -> Dict[str, Any]:
    """All seeds of ``config`` as one vmapped program; returns NumPy curves."""
    t0 = time.perf_counter()
    fn = jax.jit(jax.vmap(shac.make_train_fn(config), in_axes=(0, None)))
    keys = jax.vmap(jax.random.key)(jnp.asarray(list(seeds)))
    _, metrics, evals = jax.device_get(fn(keys, config.hparams()))
    steps = np.asarray(metrics["env_steps"][0])
    eval_its = np.minimum(np.arange(1, evals.shape[1] + 1) * config.eval_every, config.iterations)
    return {
        "config": dataclasses.asdict(config),
        "env_steps": int(steps[-1]),
        "eval_env_steps": steps[eval_its - 1],
        "eval_return": np.asarray(evals),           # [seeds, evals]
        "final_return": np.asarray(evals[:, -1]),   # [seeds]
        "wall_s": time.perf_counter() - t0,
    }


def compare(env: str = "cartpole", seeds: Sequence[int] = (0, 1), *, n: int = 32, num_envs: int = 32,
            iterations: int = 400, bpo_num_envs: int = 8, bpo_actor_lr: float = 1e-3,
            evals: int = 8, verbose: bool = True, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run SHAC, then BPO with at least SHAC's env steps; returns both results.

    ``overrides``: further ``SHACConfig`` fields for both arms (e.g. network sizes; ``--tiny``).
    """
    seeds = [int(s) for s in seeds]
    overrides = dict(overrides or {})
    shac_cfg = shac.SHACConfig(env=env, horizon=n, num_envs=num_envs, iterations=iterations,
                               eval_every=max(1, iterations // evals), **overrides)
    _, episode_length = shac.validate(shac_cfg)
    if verbose:
        print(f"SHAC: n={n}, {num_envs} envs, {iterations} iterations, seeds {seeds} ...", flush=True)
    res_shac = _run(shac_cfg, seeds)
    bpo_iterations = max(1, math.ceil(res_shac["env_steps"] / (bpo_num_envs * episode_length)))
    bpo_cfg = shac.bpo_config(env, num_envs=bpo_num_envs, iterations=bpo_iterations, actor_lr=bpo_actor_lr,
                              eval_every=max(1, bpo_iterations // evals), **overrides)
    if verbose:
        print(f"  done in {res_shac['wall_s']:.1f}s: {res_shac['env_steps']} env steps", flush=True)
        print(f"BPO: n={episode_length} (whole episodes), {bpo_num_envs} envs, {bpo_iterations} iterations ...",
              flush=True)
    res_bpo = _run(bpo_cfg, seeds)
    if verbose:
        print(f"  done in {res_bpo['wall_s']:.1f}s: {res_bpo['env_steps']} env steps", flush=True)
    return {"env": env, "seeds": seeds, "episode_length": episode_length, "shac": res_shac, "bpo": res_bpo}


def report(result: Dict[str, Any]) -> str:
    s, b = result["shac"], result["bpo"]
    lines = [f"final evaluation return on {result['env']} (deterministic policy, fresh episodes):"]
    for i, seed in enumerate(result["seeds"]):
        lines.append(f"  seed {seed}: SHAC {s['final_return'][i]:8.2f} ({s['env_steps']} steps)   "
                     f"BPO {b['final_return'][i]:8.2f} ({b['env_steps']} steps)")
    lines.append(f"  mean  : SHAC {np.mean(s['final_return']):8.2f}   BPO {np.mean(b['final_return']):8.2f}")
    return "\n".join(lines)


def plot(result: Dict[str, Any], path: str) -> None:
    plt = rundir.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, colour, label in (("shac", "C3", "SHAC (n=%d + critic)" % result["shac"]["config"]["horizon"]),
                                ("bpo", "C0", "BPO (n=%d, no critic)" % result["episode_length"])):
        r = result[name]
        x, y = r["eval_env_steps"], r["eval_return"]
        ax.plot(x, y.mean(0), color=colour, label=label)
        ax.fill_between(x, y.min(0), y.max(0), color=colour, alpha=0.2)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("evaluation return")
    ax.set_title(f"{result['env']}: SHAC vs BPO ({len(result['seeds'])} seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = rundir.CliParser(prog="python -m experiments.shac_vs_bpo", description=__doc__.split("\n")[0])
    p.add_argument("--env", default="cartpole", help=f"one of {ENVS} (default cartpole)")
    p.add_argument("--tiny", action="store_true", help="a smoke configuration (tests): 2 seeds, SHAC 4 iterations "
                   "of 4 envs × 8 steps, BPO on 2 envs, (8,) MLPs, 2 evaluation episodes; seconds on 2 CPU cores "
                   "(explicit options below override it)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds 0..S-1 (default 2)")
    p.add_argument("--n", type=int, default=None, help="SHAC window (default 32)")
    p.add_argument("--num-envs", type=int, default=None, help="SHAC parallel envs (default 32)")
    p.add_argument("--iterations", type=int, default=None, help="SHAC iterations (default 400)")
    p.add_argument("--bpo-num-envs", type=int, default=None, help="BPO parallel envs (default 8)")
    p.add_argument("--bpo-actor-lr", type=float, default=1e-3, help="BPO learning rate (default 1e-3)")
    p.add_argument("--out", default=None, help="run folder (default runs/shac_vs_bpo-<timestamp>)")
    args = p.parse_args(argv)
    pre = PRESETS["tiny" if args.tiny else "default"]
    for name in ("seeds", "n", "num_envs", "iterations", "bpo_num_envs"):
        if getattr(args, name) is None:
            setattr(args, name, pre[name])
    overrides = dict(pre["overrides"] or {})
    if args.env not in ENVS:
        p.fail(f"--env: unknown environment {args.env!r}; choose one of {', '.join(ENVS)}")
    for flag, v in (("--seeds", args.seeds), ("--n", args.n), ("--num-envs", args.num_envs),
                    ("--iterations", args.iterations), ("--bpo-num-envs", args.bpo_num_envs)):
        if v < 1:
            p.fail(f"{flag} must be >= 1, got {v}")
    if not args.bpo_actor_lr > 0:
        p.fail(f"--bpo-actor-lr must be > 0, got {args.bpo_actor_lr}")
    try:
        shac.validate(shac.SHACConfig(env=args.env, horizon=args.n, num_envs=args.num_envs,
                                      iterations=args.iterations, **overrides))
        out_dir = rundir.new_run_dir("shac_vs_bpo", out=args.out)
    except (ValueError, TypeError, OSError) as err:
        p.fail(str(err))
    result = compare(args.env, range(args.seeds), n=args.n, num_envs=args.num_envs, iterations=args.iterations,
                     bpo_num_envs=args.bpo_num_envs, bpo_actor_lr=args.bpo_actor_lr, overrides=overrides)
    print(report(result), flush=True)
    rundir.write_json(f"{out_dir}/shac_vs_bpo.json", {"args": vars(args), **result,
                                                      "environment": rundir.environment_info()})
    plot(result, f"{out_dir}/shac_vs_bpo.png")
    print(f"run folder: {out_dir}", flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
