"""The main job: train the short-horizon actor-critic (SHAC) on cart-pole swing-up.

    python -m experiments.train                       # small default: ~1-2 min on 2 CPU cores
    python -m experiments.train --n 16 --num-envs 64 --iterations 800 --seed 3 --out runs/my_run
    python -m experiments.train --env pendulum --n 200 --no-critic    # BPO (n = episode, no critic)
    python -m experiments.train --out runs/a --checkpoint-every 50    # atomic checkpoints in runs/a/ckpt
    python -m experiments.train --resume runs/a                       # continue after a crash / kill

Each iteration unrolls ``--n`` steps of ``--num-envs`` cart-poles in parallel through the
differentiable simulator, ascends the pathwise gradient of the n-step return bootstrapped by a
value critic, and fits the critic on TD(λ) targets (``mbpo_grad.agents.shac``). A progress line
is printed every ``--eval-every`` iterations (env steps, training-episode return, evaluation
return of the deterministic policy on fresh episodes, gradient norm, skipped updates, masked
envs); the last line is the final evaluation.

Reliability. Non-finite or exploding actor gradients are masked per environment and bad updates
are skipped (``--guard``, ``--max-grad-norm-to-skip``); when more than ``--skip-threshold`` of
the last ``--skip-window`` updates were skipped the run stops with a one-line error naming the
likely cause (horizon too long, float32 through contacts) and the remedies (a shorter horizon
with the critic bootstrap, ``--x64``). ``--x64`` runs everything in float64 (it turns on
``jax_enable_x64`` before any array exists). ``--fault-rate p`` wraps the env in
``envs.faults.inject_faults`` (NaN states at random steps) to watch the guards work.
``--checkpoint-every K`` (a multiple of ``--eval-every``) saves the full training state
atomically to ``RUN_DIR/ckpt`` after every K iterations; ``--resume RUN_DIR`` takes every
setting from ``RUN_DIR/config.json`` and continues from the newest complete checkpoint (from
scratch if there is none). A resumed run's ``metrics.csv`` is identical to an uninterrupted
run's, and two runs with the same seed and settings write identical ``metrics.csv`` files.

Exit status: 0 on success; 2 for bad command-line input (one line on stderr, no traceback);
1 when training stopped because the skip rate stayed too high (one line on stderr; the run
folder keeps ``config.json``, the metrics so far and ``summary.json`` with the message).

Run folder (``--out DIR``, default ``runs/train-<timestamp>/``; ``mbpo_grad.runs``): ``config.json``
(the agent's configuration, CLI arguments, versions; written before training starts),
``metrics.csv`` (long format: run, n, seed, step = iteration, metric, value; per-iteration
training metrics and the evaluations, rewritten after every block), ``tensorboard/`` (event
files; ``--no-tensorboard`` skips them), ``policy/`` (the final policy:
``mg.load_policy(RUN_DIR)``, ``python -m experiments.evaluate RUN_DIR``),
``learning_curve.png``, ``summary.json`` (status, final return, env steps, wall time) and
``ckpt/``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import jax

from experiments import rundir
from mbpo_grad.envs import FAMILIES

ENVS = ("cartpole", "pendulum")
SIMULATOR_PREFIXES = FAMILIES  # brax:<env>, mjx:<model>
GUARDS = ("per_env", "batch")
# Flags that --resume does not take from config.json.
_RUN_CONTROL = ("resume", "quiet", "no_tensorboard")

def build_parser() -> rundir.CliParser:
    from mbpo_grad.agents import shac

    d = shac.SHACConfig()
    p = rundir.CliParser(prog="python -m experiments.train",
                         description="Train the short-horizon actor-critic (SHAC) through a differentiable env.")
    p.add_argument("--env", default="cartpole",
                   help=f"environment: one of {ENVS}, or brax:<env> / mjx:<model> (default cartpole)")
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
    p.add_argument("--x64", action="store_true", help="run in float64 (enables jax_enable_x64 first)")
    p.add_argument("--guard", default=d.guard, help=f"gradient guard: one of {GUARDS} (default {d.guard})")
    p.add_argument("--max-grad-norm-to-skip", type=float, default=d.max_grad_norm_to_skip,
                   help=f"skip (or, per env, mask) gradients with a larger norm (default {d.max_grad_norm_to_skip:g})")
    p.add_argument("--skip-window", type=int, default=d.skip_window,
                   help=f"updates over which the skip rate is judged (default {d.skip_window})")
    p.add_argument("--skip-threshold", type=float, default=d.skip_threshold,
                   help=f"stop when the skip rate exceeds this (default {d.skip_threshold})")
    p.add_argument("--fault-rate", type=float, default=0.0,
                   help="inject NaN states with this per-env, per-step probability (testing; default 0)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="save a checkpoint every K iterations (a multiple of --eval-every) to RUN_DIR/ckpt")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its newest checkpoint (settings from its config.json)")
    p.add_argument("--out", default=None, help="run folder (default runs/train-<timestamp>)")
    p.add_argument("--tiny", action="store_true",
                   help="a smoke run of every code path at toy size (8 envs, n = 8, 32-step episodes, 6 iterations)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--no-tensorboard", action="store_true", help="write no TensorBoard event files")
    return p


def resume_args(args, parser: rundir.CliParser):
    """The saved arguments of ``args.resume``'s run (only --quiet may be given alongside)."""
    run_dir = args.resume
    defaults = vars(parser.parse_args([]))
    given = [k for k, v in vars(args).items() if k not in _RUN_CONTROL and v != defaults[k]]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        parser.fail(f"--resume takes every setting from {os.path.join(run_dir, 'config.json')}; "
                    f"do not combine it with {flags}")
    path = os.path.join(run_dir, "config.json")
    try:
        saved = rundir.read_json(path)["args"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        parser.fail(f"--resume: cannot read the run's settings from {path}: {err}")
    merged = dict(defaults)
    for k, v in saved.items():
        if k in merged and k not in _RUN_CONTROL:
            merged[k] = v
    merged.update(resume=run_dir, quiet=args.quiet, no_tensorboard=args.no_tensorboard, out=run_dir)
    return argparse.Namespace(**merged)


def config_from_args(args, parser: rundir.CliParser):
    """(SHACConfig, episode_length) from parsed flags; bad values exit 2 with one line."""
    from mbpo_grad.agents import shac

    if args.env not in ENVS and not args.env.startswith(SIMULATOR_PREFIXES):
        parser.fail(f"--env: unknown environment {args.env!r}; choose one of {', '.join(ENVS)} "
                    "or brax:<env> / mjx:<model>")
    if args.n < 1:
        parser.fail(f"--n must be >= 1 (the window length), got {args.n}")
    for flag, v in (("--num-envs", args.num_envs), ("--iterations", args.iterations), ("--eval-every", args.eval_every),
                    ("--skip-window", args.skip_window)):
        if v < 1:
            parser.fail(f"{flag} must be >= 1, got {v}")
    if args.episode_length is not None and args.episode_length < 1:
        parser.fail(f"--episode-length must be >= 1, got {args.episode_length}")
    if args.guard not in GUARDS:
        parser.fail(f"--guard must be one of {', '.join(GUARDS)}, got {args.guard!r}")
    if not args.max_grad_norm_to_skip > 0:
        parser.fail(f"--max-grad-norm-to-skip must be > 0, got {args.max_grad_norm_to_skip}")
    if not 0.0 <= args.skip_threshold < 1.0:
        parser.fail(f"--skip-threshold must lie in [0, 1), got {args.skip_threshold}")
    if not 0.0 <= args.fault_rate <= 1.0:
        parser.fail(f"--fault-rate must lie in [0, 1], got {args.fault_rate}")
    eval_every = min(args.eval_every, args.iterations)
    if args.checkpoint_every is not None and (args.checkpoint_every < 1 or args.checkpoint_every % eval_every):
        parser.fail(f"--checkpoint-every must be a positive multiple of --eval-every ({eval_every}): checkpoints "
                    f"are taken between blocks, got {args.checkpoint_every}")
    cfg = shac.SHACConfig(
        env=args.env, horizon=args.n, num_envs=args.num_envs, iterations=args.iterations,
        episode_length=args.episode_length, use_critic=not args.no_critic,
        actor_lr=args.actor_lr, critic_lr=args.critic_lr, gamma=args.gamma, lam=args.lam,
        eval_every=eval_every, guard=args.guard, max_grad_norm_to_skip=args.max_grad_norm_to_skip,
        skip_window=args.skip_window, skip_threshold=args.skip_threshold, x64=bool(args.x64),
    )
    try:
        _, episode_length = shac.validate(cfg)
    except (ValueError, TypeError) as err:
        parser.fail(str(err))
    return cfg, episode_length


def make_env(cfg, args):
    """The env to train on: ``cfg.env`` (float64 simulators under --x64), wrapped in faults if asked."""
    from mbpo_grad.agents import common
    from mbpo_grad.envs.faults import inject_faults

    env = common.make_env(cfg.env, x64=cfg.x64)
    return inject_faults(env, rate=args.fault_rate) if args.fault_rate > 0 else env


def main(argv: Optional[Sequence[str]] = None) -> float:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume is not None:
        args = resume_args(args, parser)
    if args.tiny:
        args.n, args.num_envs, args.iterations, args.eval_every, args.episode_length = 8, 8, 6, 3, 32
    if args.x64:
        # Before any array exists: arrays created earlier would stay 32-bit.
        jax.config.update("jax_enable_x64", True)
    from mbpo_grad import guards
    from mbpo_grad.agents import shac

    cfg, episode_length = config_from_args(args, parser)
    try:
        out_dir = rundir.new_run_dir("train", out=args.out)
    except (ValueError, OSError) as err:
        parser.fail(f"--out: {err}")
    env = make_env(cfg, args)
    mode = "SHAC" if cfg.use_critic else ("BPO" if cfg.horizon == episode_length else "no-critic")
    resuming = "" if args.resume is None else f", resuming from {os.path.join(out_dir, 'ckpt')}"
    print(f"{mode} on {env.name}: n={cfg.horizon}, num_envs={cfg.num_envs}, iterations={cfg.iterations}, "
          f"seed={args.seed}{', float64' if cfg.x64 else ''}{resuming}", flush=True)
    info = {"script": "experiments.train", "seed": args.seed,
            "args": {k: v for k, v in vars(args).items() if k not in _RUN_CONTROL}}
    custom_env = env if args.fault_rate > 0 else None   # a wrapped env is not rebuilt from its name
    try:
        _, metrics = shac.run(cfg, jax.random.key(args.seed), env=custom_env, progress=not args.quiet,
                              run_dir=out_dir, checkpoint_every=args.checkpoint_every,
                              resume=args.resume is not None, tensorboard=not args.no_tensorboard, info=info)
    except guards.SkipRateExceeded as err:
        print(f"{parser.prog}: error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
        raise SystemExit(1)
    except ValueError as err:  # e.g. a checkpoint written under other settings
        if args.resume is None:
            raise
        parser.fail(f"--resume: {err}")
    final = float(metrics["eval_return"][-1])
    print(f"final evaluation return: {final:.2f}  (deterministic policy, {cfg.eval_envs} fresh episodes; "
          f"{int(metrics['env_steps'][-1])} env steps, {metrics['wall_s']:.1f}s)", flush=True)
    print(f"run folder: {out_dir}", flush=True)
    return final


if __name__ == "__main__":
    main(sys.argv[1:])
