"""Evaluate a saved policy: ``python -m experiments.evaluate RUN_DIR``.

    python -m experiments.evaluate runs/train-20261201-101500            # the run's final evaluation
    python -m experiments.evaluate runs/a --episodes 64 --seed 3          # fresh episodes
    python -m experiments.evaluate runs/brax_run --html rollout.html      # a Brax env: an HTML rollout

Loads the policy with ``mg.load_policy`` (the run's observation normalisation inside) and runs
it deterministically on fresh episodes of the run's env (``mbpo_grad.runs.evaluate_saved``).
Without ``--seed`` and ``--episodes`` it uses the key and the number of episodes of the run's
final evaluation, so it prints the run's final evaluation return. ``--html FILE`` (Brax envs)
writes one episode as a ``brax.io.html`` page.

Exit status: 0; 2 for bad input (one line on stderr).
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from experiments import rundir


def build_parser() -> rundir.CliParser:
    p = rundir.CliParser(prog="python -m experiments.evaluate",
                         description="Evaluate the saved policy of a run folder on fresh episodes.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by train(run_dir=...) / experiments.train")
    p.add_argument("--episodes", type=int, default=None, help="episodes (default: the run's eval_envs)")
    p.add_argument("--seed", type=int, default=None, help="seed of the episodes (default: the run's final evaluation key)")
    p.add_argument("--html", default=None, metavar="FILE", help="Brax envs: write one episode as an HTML page")
    return p


def write_html(path: str, env, act, key, episode_length: int) -> None:
    """One deterministic episode of a Brax env as a ``brax.io.html`` page."""
    import jax
    from brax.io import html

    brax_env = env.info["brax_env"]
    state = env.reset(key)
    step = jax.jit(env.step)
    states = []
    for _ in range(episode_length):   # a host loop: a viewer, not a hot path
        states.append(state.pipeline_state)
        state = step(state, act(env.observe(state)))
        if float(state.done) > 0:
            break
    with open(path, "w") as f:
        f.write(html.render(brax_env.sys.tree_replace({"opt.timestep": brax_env.dt}), states))


def main(argv: Optional[Sequence[str]] = None) -> float:
    p = build_parser()
    args = p.parse_args(argv)
    if not os.path.isdir(args.run_dir):
        p.fail(f"RUN_DIR: no run folder {args.run_dir!r}")
    if args.episodes is not None and args.episodes < 1:
        p.fail(f"--episodes must be >= 1, got {args.episodes}")
    import jax

    from mbpo_grad import runs
    from mbpo_grad.agents import common

    try:
        act, info = runs.load_policy(args.run_dir)
    except ValueError as err:
        p.fail(str(err))
    key = None if args.seed is None else jax.random.key(args.seed)
    ret = runs.evaluate_saved(args.run_dir, key=key, num_envs=args.episodes)
    n = info["spec"]["eval_envs"] if args.episodes is None else args.episodes
    print(f"{info['meta']['agent']} on {info['spec']['env']}: mean return {ret:.2f} over {n} episodes "
          f"(deterministic policy{'' if args.seed is not None else ', the run final evaluation key'})")
    if args.html:
        if not info["spec"]["env"].startswith("brax:"):
            p.fail("--html: only Brax envs can be rendered (brax.io.html)")
        env = common.make_env(info["spec"]["env"], x64=bool(getattr(info["config"], "x64", False)))
        write_html(args.html, env, act, jax.random.key(0 if args.seed is None else args.seed),
                   int(info["spec"]["episode_length"]))
        print(f"html: {os.path.abspath(args.html)}")
    return ret


if __name__ == "__main__":
    main(sys.argv[1:])
