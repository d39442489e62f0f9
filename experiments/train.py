"""The main job: train the short-horizon actor-critic (SHAC) on cart-pole swing-up.

    python -m experiments.train                       # small default: under a minute on 2 CPU cores
    python -m experiments.train --n 16 --num-envs 64 --iterations 800 --seed 3 --out runs/my_run
    python -m experiments.train --env pendulum --n 200 --no-critic    # BPO (n = episode, no critic)

Each iteration unrolls ``--n`` steps of ``--num-envs`` cart-poles in parallel through the
differentiable simulator, ascends the pathwise gradient of the n-step return bootstrapped by a
value critic, and fits the critic on TD(λ) targets (``mbpo_grad.agents.shac``). A progress line
is printed every ``--eval-every`` iterations (env steps, training-episode return, evaluation
return of the deterministic policy on fresh episodes); the last line is the final evaluation.

Run folder (``--out DIR``, default ``runs/train-<timestamp>/``): ``config.json`` (the agent's
configuration, CLI arguments, versions), ``metrics.csv`` (long format: run, n, seed, step =
iteration, metric, value; per-iteration training metrics and the evaluations) and
``summary.json`` (final return, env steps, wall time).
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Optional, Sequence

import jax
import numpy as np

from experiments import rundir
from mbpo_grad.agents import shac

ENVS = ("cartpole", "pendulum")


def build_parser() -> rundir.CliParser:
    d = shac.SHACConfig()
    p = rundir.CliParser(prog="python -m experiments.train",
                         description="Train the short-horizon actor-critic (SHAC) through a differentiable env.")
    p.add_argument("--env", default="cartpole", help=f"environment: one of {ENVS} (default cartpole)")
    p.add_argument("--n", type=int, default=d.horizon, help=f"window / horizon n (default {d.horizon})")
    p.add_argument("--num-envs", type=int, default=d.num_envs, help=f"parallel envs (default {d.num_envs})")
    p.add_argument("--iterations", type=int, default=d.iterations, help=f"iterations (default {d.iterations})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--episode-length", type=int, default=None, help="time limit (default: the env's, 200)")
    p.add_argument("--actor-lr", type=float, default=d.actor_lr, help=f"default {d.actor_lr}")
    p.add_argument("--critic-lr", type=float, default=d.critic_lr, help=f"default {d.critic_lr}")
    p.add_argument("--gamma", type=float, default=d.gamma, help=f"default {d.gamma}")
    p.add_argument("--lam", type=float, default=d.lam, help=f"TD(lambda) lambda, default {d.lam}")
    p.add_argument("--no-critic", action="store_true", help="no critic bootstrap (with --n = episode length: BPO)")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help=f"default {d.eval_every}")
    p.add_argument("--out", default=None, help="run folder (default runs/train-<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def config_from_args(args, parser: rundir.CliParser):
    """(SHACConfig, episode_length) from parsed flags; bad values exit 2 with one line."""
    if args.env not in ENVS:
        parser.fail(f"--env: unknown environment {args.env!r}; choose one of {', '.join(ENVS)}")
    if args.n < 1:
        parser.fail(f"--n must be >= 1 (the window length), got {args.n}")
    for flag, v in (("--num-envs", args.num_envs), ("--iterations", args.iterations), ("--eval-every", args.eval_every)):
        if v < 1:
            parser.fail(f"{flag} must be >= 1, got {v}")
    if args.episode_length is not None and args.episode_length < 1:
        parser.fail(f"--episode-length must be >= 1, got {args.episode_length}")
    cfg = shac.SHACConfig(
        env=args.env, horizon=args.n, num_envs=args.num_envs, iterations=args.iterations,
        episode_length=args.episode_length, use_critic=not args.no_critic,
        actor_lr=args.actor_lr, critic_lr=args.critic_lr, gamma=args.gamma, lam=args.lam,
        eval_every=min(args.eval_every, args.iterations),
    )
    try:
        _, episode_length = shac.validate(cfg)
    except (ValueError, TypeError) as err:
        parser.fail(str(err))
    return cfg, episode_length


def write_run(out_dir: str, cfg: shac.SHACConfig, args, metrics, seed: int) -> None:
    rundir.write_json(f"{out_dir}/config.json", {
        "script": "experiments.train", "agent": "shac" if cfg.use_critic else "bpo",
        "config": dataclasses.asdict(cfg), "args": vars(args), "seed": seed,
        "environment": rundir.environment_info(),
    })
    table = rundir.MetricsTable()
    run = "shac" if cfg.use_critic else "bpo"
    its = np.arange(1, len(metrics["env_steps"]) + 1)
    for name in ("env_steps", "episode_return", "window_return", "reward_per_step", "actor_loss",
                 "critic_loss", "grad_norm"):
        table.add_array(run, cfg.horizon, [seed], its, name, metrics[name][None])
    table.add_array(run, cfg.horizon, [seed], metrics["eval_iteration"], "eval_return", metrics["eval_return"][None])
    table.write(f"{out_dir}/metrics.csv")
    rundir.write_json(f"{out_dir}/summary.json", {
        "final_eval_return": float(metrics["eval_return"][-1]),
        "env_steps": int(metrics["env_steps"][-1]),
        "wall_s": float(metrics["wall_s"]),
    })


def main(argv: Optional[Sequence[str]] = None) -> float:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg, episode_length = config_from_args(args, parser)
    try:
        out_dir = rundir.new_run_dir("train", out=args.out)
    except (ValueError, OSError) as err:
        parser.fail(f"--out: {err}")
    mode = "SHAC" if cfg.use_critic else ("BPO" if cfg.horizon == episode_length else "no-critic")
    print(f"{mode} on {cfg.env}: n={cfg.horizon}, num_envs={cfg.num_envs}, iterations={cfg.iterations}, "
          f"seed={args.seed} (compiling ...)", flush=True)
    _, metrics = shac.train(cfg, jax.random.key(args.seed), progress=not args.quiet)
    final = float(metrics["eval_return"][-1])
    write_run(out_dir, cfg, args, metrics, args.seed)
    print(f"final evaluation return: {final:.2f}  (deterministic policy, {cfg.eval_envs} fresh episodes; "
          f"{int(metrics['env_steps'][-1])} env steps, {metrics['wall_s']:.1f}s)", flush=True)
    print(f"run folder: {out_dir}", flush=True)
    return final


if __name__ == "__main__":
    main(sys.argv[1:])
