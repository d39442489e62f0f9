"""Flow vs Gaussian policy under SVG(n) on pendulum / cart-pole: evaluation returns over seeds.

    python -m experiments.flow_vs_gaussian --out runs/flow_vs_gaussian [--env pendulum] [--seeds 4]
    python -m experiments.flow_vs_gaussian --out /tmp/fvg --tiny [--agent model_based]   # smoke run: seconds

Both policies are tanh-squashed and reparameterised, a = π(s, ε; w) with ε ~ N(0, I):
``mg.policies.gaussian`` (a = tanh(μ(s) + σ(s) ε)) and ``mg.policies.flow`` (the same
state-conditioned affine base followed by ``--layers`` flow layers, zero-initialised so the
flow starts as that Gaussian). Each is trained by SVG(n) — the n-step pathwise objective with
a learned value critic on the tail,

    J_n(w) = mean_b [ Σ_{t<n} γ^t r(s_t, a_t) + γ^n V(s_n) ],   a_t = π(s_t, ε_t; w),

with fresh ε per window — by one of two agents (``--agent``):

* ``shac`` (default): through the TRUE differentiable simulator (``agents.shac`` with
  ``policy=...``; SVG(n) on the simulator = SHAC with a stochastic policy). SHAC has no
  entropy term, so each policy's noise scale is whatever the return gradient makes it.
* ``model_based``: through a learned ensemble branching from replayed real states
  (``agents.model_based``), optionally with the entropy bonus −α log π (``--alpha``; it uses
  each policy's exact log-likelihood).

Note on ``--layers``: before the 1-D flow's tail, skew and scale parameters shared one budget
over the K layers (``mg.policies.flow``), K >= 2 stacked sinh-arcsinh layers could push the
pre-squash value to ~1e30 once SHAC drove the policy to saturation, and the backward pass
overflowed (0 · inf = NaN; 3 of 4 pendulum seeds with K = 2). With the shared budgets K = 2
and K = 4 run finite on all 4 seeds.

Seeds run as one vmapped program per policy (``mg.sweep``). The policy's ε = 0 action is
evaluated on fresh episodes. Outputs in ``--out``: ``flow_vs_gaussian.json`` (configs; per
policy: env steps at each evaluation, eval returns [seeds, evals], final mean / std / min /
max, wall time) and ``flow_vs_gaussian.png`` (return vs env steps, every seed and the mean).

``--tiny`` (a smoke configuration for tests, ``PRESETS["tiny"]``) runs both policies of the chosen
agent on 2 vmapped seeds for 4 iterations with (8,)-wide MLPs, evaluating twice (SHAC: 4 envs ×
8-step windows, one critic step; model-based: 2 envs × 8 real steps, a 3-member ensemble, 3-step
model rollouts): the same JSON and PNG in seconds, far from trained. Explicit ``--seeds``,
``--iterations``, ``--layers`` and ``--hidden`` override the preset.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Dict, Optional, Sequence

import numpy as np

import mbpo_grad as mg
from experiments import plots as PL
from mbpo_grad.agents import common
from mbpo_grad.agents import model_based as MB
from mbpo_grad.agents import shac

ENVS = ("pendulum", "cartpole")
AGENTS = ("shac", "model_based")

# run sizes of the CLI: keyword arguments of ``run_experiment`` and, per agent, config overrides
PRESETS = {
    "default": dict(seeds=4, iterations=300, layers=1, hidden=(64, 64), config={"shac": {}, "model_based": {}}),
    # tiny: both policies, 2 vmapped seeds, 2 evaluations; JSON and PNG; nearly all compilation
    "tiny": dict(seeds=2, iterations=4, layers=1, hidden=(8,), config={
        "shac": dict(num_envs=4, horizon=8, eval_every=2, eval_envs=2, critic_iterations=1, critic_minibatches=1,
                     critic_hidden=(8,)),
        "model_based": dict(num_envs=2, steps_per_iteration=8, updates_per_iteration=2, batch_size=16,
                            buffer_size=512, warmup_steps=0, eval_every=2, eval_envs=2, horizon=3, ensemble_size=3,
                            elites=2, model_hidden=(16,), model_epochs=2, fit_size=64, model_batch=16,
                            critic_hidden=(8,), critic_iterations=1),
    }),
}


def make_policy(kind: str, obs_dim: int, act_dim: int, *, hidden: Sequence[int] = (64, 64), layers: int = 1):
    if kind == "gaussian":
        return mg.policies.gaussian(obs_dim, act_dim, tuple(hidden))
    if kind == "flow":
        return mg.policies.flow(obs_dim, act_dim, layers=layers, hidden=tuple(hidden))
    raise ValueError(f"kind must be 'gaussian' or 'flow', got {kind!r}")


def make_config(agent: str, env: str, iterations: int, **kw):
    """The agent's config for ``env`` (SHAC: 16 envs × 16-step windows, actor lr 5e-3)."""
    if agent == "shac":
        for k, v in (("num_envs", 16), ("horizon", 16), ("actor_lr", 5e-3), ("eval_every", 10), ("eval_envs", 32)):
            kw.setdefault(k, v)
        return shac.SHACConfig(env=env, iterations=iterations, **kw)
    if agent == "model_based":
        kw.setdefault("eval_every", 2)
        kw.setdefault("eval_envs", 32)
        return MB.ModelBasedConfig(env=env, iterations=iterations, **kw)
    raise ValueError(f"agent must be one of {AGENTS}, got {agent!r}")


def _train_fn(agent: str, config, policy):
    if agent == "shac":
        return shac.make_train_fn(config, policy=policy)
    return MB.make_train_fn(config, policy=policy)


def run_policy(agent: str, config, policy, seeds: np.ndarray) -> Dict[str, np.ndarray]:
    """One policy over all seeds (vmapped): env steps at each evaluation, eval returns [seeds, evals]."""
    return common.eval_curves_over_seeds(_train_fn(agent, config, policy), config.hparams(), config.iterations,
                                         config.eval_every, seeds)


def run_experiment(out: str, *, env: str = "pendulum", agent: str = "shac", seeds: int = 4, seed: int = 0,
                   iterations: int = 300, layers: int = 1, hidden: Sequence[int] = (64, 64),
                   alpha: Optional[float] = None, plot: bool = True, **config_overrides) -> Dict[str, Any]:
    if env not in ENVS:
        raise ValueError(f"env must be one of {ENVS}, got {env!r}")
    if agent not in AGENTS:
        raise ValueError(f"agent must be one of {AGENTS}, got {agent!r}")
    if alpha is not None:
        if agent != "model_based":
            raise ValueError("alpha: the entropy bonus is available with --agent model_based only (SHAC has none)")
        config_overrides.update(entropy=True, alpha=float(alpha))
    os.makedirs(out, exist_ok=True)
    config = make_config(agent, env, iterations, **config_overrides)
    from mbpo_grad import envs as envs_mod

    e = envs_mod.make(env)
    seed_arr = np.arange(seed, seed + seeds, dtype=np.int32)
    results: Dict[str, Any] = {
        "env": env, "agent": agent, "seeds": seed_arr.tolist(), "layers": layers, "hidden": list(hidden),
        "alpha": alpha,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
    }
    for kind in ("gaussian", "flow"):
        pol = make_policy(kind, e.obs_size, e.action_size, hidden=hidden, layers=layers)
        t0 = time.perf_counter()
        res = run_policy(agent, config, pol, seed_arr)
        wall = time.perf_counter() - t0
        final = res["eval_return"][:, -1]
        results[kind] = {
            "env_steps": res["env_steps"][0].tolist(),
            "eval_return": res["eval_return"].tolist(),
            "final_return": final.tolist(),
            "final_mean": float(np.mean(final)), "final_std": float(np.std(final)),
            "final_min": float(np.min(final)), "final_max": float(np.max(final)),
            "best_mean": float(np.max(np.mean(res["eval_return"], 0))),
            "wall_s": wall,
        }
        print(f"[{agent}/{kind}] {env}: final eval return {[round(float(x), 1) for x in final]} "
              f"(mean {np.mean(final):.1f} ± {np.std(final):.1f}) after {int(res['env_steps'][0, -1])} env steps "
              f"({wall:.0f}s)", flush=True)
    with open(os.path.join(out, "flow_vs_gaussian.json"), "w") as f:
        json.dump(results, f, indent=2)
    if plot:
        _plot(results, os.path.join(out, "flow_vs_gaussian.png"))
    return results


def _plot(results, path):
    runs = {kind: (results[kind]["env_steps"], results[kind]["eval_return"]) for kind in ("gaussian", "flow")}
    labels = {kind: f"{kind} (mean of {len(results[kind]['eval_return'])} seeds)" for kind in runs}
    PL.plot_seed_curves(path, runs, colours={"gaussian": "C0", "flow": "C1"}, labels=labels,
                        title=f"Flow vs Gaussian policy, SVG(n) via {results['agent']} on {results['env']}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.flow_vs_gaussian", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (created): flow_vs_gaussian.json / .png")
    p.add_argument("--env", choices=ENVS, default="pendulum")
    p.add_argument("--agent", choices=AGENTS, default="shac",
                   help="shac: SVG(n) through the true simulator; model_based: through a learned ensemble")
    p.add_argument("--tiny", action="store_true", help="a smoke configuration (tests): both policies, 2 seeds, "
                   "4 iterations, (8,) MLPs, tiny agent budgets; seconds on 2 CPU cores (explicit --seeds, "
                   "--iterations, --layers, --hidden override it)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per policy (vmapped; default 4)")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--iterations", type=int, default=None, help="agent iterations (default 300)")
    p.add_argument("--layers", type=int, default=None,
                   help="flow layers K (1-D: sinh-arcsinh + affine pairs; default 1)")
    p.add_argument("--hidden", type=int, nargs="+", default=None,
                   help="policy MLP widths (both policies; default 64 64)")
    p.add_argument("--alpha", type=float, default=None,
                   help="entropy temperature (model_based only; default: no entropy term)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = p.parse_args(argv)
    pre = PRESETS["tiny" if args.tiny else "default"]
    size = {k: (getattr(args, k) if getattr(args, k) is not None else pre[k])
            for k in ("seeds", "iterations", "layers", "hidden")}
    return run_experiment(args.out, env=args.env, agent=args.agent, seed=args.seed, alpha=args.alpha,
                          plot=not args.no_plot, **size, **pre["config"][args.agent])

if __name__ == "__main__":
    main()
