"""Real environment steps to learn pendulum swing-up: model-based SVG(n) vs model-free SHAC.

    python -m experiments.model_based_vs_model_free --out runs/mb_vs_mf [--seeds 3] [--target -400]
    python -m experiments.model_based_vs_model_free --out /tmp/mbmf --tiny   # smoke run: seconds on 2 CPU cores

Both agents train a policy by pathwise gradients over short horizons with a learned value
critic; what differs is where the gradient comes from:

* model-based (``mbpo_grad.agents.model_based``): a few hundred real transitions per
  iteration go into a replay buffer, a probabilistic ensemble is refitted on them, and the
  tanh-Gaussian policy takes SVG(n) steps through n-step rollouts IN THE LEARNED MODEL
  branching from real states (MBPO / MAAC-style). Reward learned by the model.
* model-free (``mbpo_grad.agents.shac``): the short-horizon actor-critic backpropagating
  through the TRUE differentiable simulator; every window of n steps of every env counts as
  real environment steps.

Pendulum swing-up, 200-step episodes (a random policy scores ≈ −1200, a swing-up ≈ −150).
Each agent runs ``--seeds`` seeds as one vmapped program (``mg.sweep``); the policy's mode is
evaluated on fresh episodes every few iterations. Printed and written: for each agent and seed
the real env steps at the first evaluation with return ≥ ``--target`` (null if never), and
the median over seeds.

Outputs in ``--out``: ``model_based_vs_model_free.json`` (configs; per agent the env-step axis,
eval returns [seeds, evals], steps to target per seed, median, wall time) and
``model_based_vs_model_free.png`` (eval return vs real env steps, log x axis, target line).

``--tiny`` (a smoke configuration for tests, ``PRESETS["tiny"]``) runs both agents on 2 vmapped
seeds for 2 iterations each, evaluating after each (model-based: 2 envs × 8 real steps, a 3-member
ensemble, 3-step model rollouts; SHAC: 4 envs × 8-step windows, one critic step): the same JSON
and PNG in seconds, far from the target. Explicit ``--seeds``, ``--mb-iterations`` and
``--shac-iterations`` override the preset; ``--target=-1e9`` makes every evaluation count as
reaching the target (the steps-to-target path).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Dict, Optional

import numpy as np

from experiments import plots as PL
from mbpo_grad.agents import common
from mbpo_grad.agents import model_based as MB
from mbpo_grad.agents import shac

ENV = "pendulum"

# run sizes of the CLI (keyword arguments of ``run_experiment``)
PRESETS = {
    "default": dict(seeds=3, mb_iterations=30, shac_iterations=600, mb_overrides=None, shac_overrides=None),
    # tiny: both agents, 2 vmapped seeds, 2 evaluations each; JSON and PNG; nearly all compilation
    "tiny": dict(seeds=2, mb_iterations=2, shac_iterations=2,
                 mb_overrides=dict(num_envs=2, steps_per_iteration=8, updates_per_iteration=2, batch_size=16,
                                   buffer_size=512, warmup_steps=0, eval_envs=2, horizon=3, ensemble_size=3,
                                   elites=2, model_hidden=(32, 32), model_epochs=5, fit_size=64, model_batch=16,
                                   actor_hidden=(16,), critic_hidden=(16,), critic_iterations=1),
                 shac_overrides=dict(num_envs=4, horizon=8, critic_iterations=1, critic_minibatches=1, eval_every=1,
                                     eval_envs=2)),
}


def model_based_config(iterations: int = 30, **kw) -> MB.ModelBasedConfig:
    """The model-based agent's setting: 4 envs × 25 steps = 100 real steps per iteration."""
    kw.setdefault("eval_every", 1)
    kw.setdefault("eval_envs", 32)
    return MB.ModelBasedConfig(env=ENV, iterations=iterations, **kw)


def shac_config(iterations: int = 600, **kw) -> shac.SHACConfig:
    """SHAC on the true simulator: 16 envs × 16-step windows (≈ 256 real steps per iteration).

    The best of a small grid we tried on pendulum (num_envs ∈ {8, 16, 64}, horizon ∈ {8, 16, 32},
    actor_lr ∈ {2e-3, 5e-3}); the library default (64 × 32) had not reached −400 after 550k steps.
    """
    kw.setdefault("num_envs", 16)
    kw.setdefault("horizon", 16)
    kw.setdefault("actor_lr", 5e-3)
    kw.setdefault("eval_every", 10)
    kw.setdefault("eval_envs", 32)
    return shac.SHACConfig(env=ENV, iterations=iterations, **kw)


def steps_to_target(env_steps: np.ndarray, returns: np.ndarray, target: float) -> Optional[int]:
    """Real env steps at the first evaluation whose return is >= target (None if none)."""
    hit = np.flatnonzero(np.asarray(returns) >= target)
    return int(np.asarray(env_steps)[hit[0]]) if hit.size else None


def _sweep_agent(make_train_fn, config, seeds: np.ndarray) -> Dict[str, np.ndarray]:
    """Vmapped over seeds (one program): env steps at each evaluation and the eval returns [seeds, evals]."""
    return common.eval_curves_over_seeds(make_train_fn(config), config.hparams(), config.iterations,
                                         config.eval_every, seeds)


def _summary(name, res, target, wall, config) -> Dict[str, Any]:
    steps = res["env_steps"][0]
    per_seed = [steps_to_target(res["env_steps"][i], res["eval_return"][i], target)
                for i in range(res["eval_return"].shape[0])]
    reached = [s for s in per_seed if s is not None]
    median = float(np.median([s if s is not None else np.inf for s in per_seed]))
    return {
        "agent": name,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
        "env_steps": steps.tolist(),
        "eval_return": res["eval_return"].tolist(),
        "final_return": res["eval_return"][:, -1].tolist(),
        "steps_to_target": per_seed,
        "seeds_reached": len(reached),
        "median_steps_to_target": None if not np.isfinite(median) else median,
        "wall_s": wall,
    }


def run_experiment(out: str, *, seeds: int = 3, seed: int = 0, target: float = -400.0,
                   mb_iterations: int = 30, shac_iterations: int = 600, plot: bool = True,
                   mb_overrides: Optional[dict] = None, shac_overrides: Optional[dict] = None) -> Dict[str, Any]:
    os.makedirs(out, exist_ok=True)
    seed_arr = np.arange(seed, seed + seeds, dtype=np.int32)
    results: Dict[str, Any] = {"env": ENV, "target": target, "seeds": seed_arr.tolist()}
    configs = {
        "model_based": (MB.make_train_fn, model_based_config(mb_iterations, **(mb_overrides or {}))),
        "shac": (shac.make_train_fn, shac_config(shac_iterations, **(shac_overrides or {}))),
    }
    for name, (factory, cfg) in configs.items():
        t0 = time.perf_counter()
        res = _sweep_agent(factory, cfg, seed_arr)
        wall = time.perf_counter() - t0
        results[name] = _summary(name, res, target, wall, cfg)
        r = results[name]
        print(f"[{name}] real env steps to reach return >= {target:g}: per seed {r['steps_to_target']}, "
              f"median {r['median_steps_to_target']}; final return {[round(x, 1) for x in r['final_return']]} "
              f"after {r['env_steps'][-1]} steps  ({wall:.0f}s)", flush=True)
    mb, mf = results["model_based"]["median_steps_to_target"], results["shac"]["median_steps_to_target"]
    results["ratio_model_free_over_model_based"] = (mf / mb) if (mb and mf) else None
    print(f"median real env steps to {target:g}: model-based {mb}, model-free SHAC {mf}"
          + (f"  (×{mf / mb:.1f})" if (mb and mf) else ""), flush=True)
    with open(os.path.join(out, "model_based_vs_model_free.json"), "w") as f:
        json.dump(results, f, indent=2)
    if plot:
        _plot(results, os.path.join(out, "model_based_vs_model_free.png"))
    return results


def _plot(results, path):
    colours = {"model_based": "C0", "shac": "C3"}
    runs = {name: (results[name]["env_steps"], results[name]["eval_return"]) for name in colours}

    def decorate(ax):
        for name, colour in colours.items():
            if results[name]["median_steps_to_target"] is not None:
                ax.axvline(results[name]["median_steps_to_target"], color=colour, ls=":", lw=1)
        ax.axhline(results["target"], color="k", ls="--", lw=1, label=f"target {results['target']:g}")

    PL.plot_seed_curves(path, runs, colours=colours, centre="median", log_x=True, decorate=decorate,
                        labels={"model_based": "model-based SVG(n) (learned ensemble)", "shac": "SHAC (true simulator)"},
                        ylabel="evaluation return (200 steps)",
                        title="Pendulum swing-up: real steps needed (median and seeds)")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.model_based_vs_model_free",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (created): model_based_vs_model_free.json / .png")
    p.add_argument("--tiny", action="store_true", help="a smoke configuration (tests): both agents, 2 seeds, "
                   "2 iterations each on tiny budgets; seconds on 2 CPU cores (explicit --seeds, --mb-iterations, "
                   "--shac-iterations override it)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per agent (vmapped; default 3)")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--target", type=float, default=-400.0, help="return threshold (random ≈ −1200, good ≈ −150)")
    p.add_argument("--mb-iterations", type=int, default=None,
                   help="model-based iterations (100 real steps each; default 30)")
    p.add_argument("--shac-iterations", type=int, default=None,
                   help="SHAC iterations (≈256 real steps each; default 600)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = p.parse_args(argv)
    size = dict(PRESETS["tiny" if args.tiny else "default"])
    for name in ("seeds", "mb_iterations", "shac_iterations"):
        if getattr(args, name) is not None:
            size[name] = getattr(args, name)
    return run_experiment(args.out, seed=args.seed, target=args.target, plot=not args.no_plot, **size)

if __name__ == "__main__":
    main()
