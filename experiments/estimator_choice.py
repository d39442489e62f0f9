"""Which gradient estimator where: pathwise (SHAC), score-function (PPO, REINFORCE) and SHAC's
``estimator="auto"`` (their per-env mixture, ``mixing.alpha_order``) on systems from smooth to flat.

    python -m experiments.estimator_choice                                  # quantized thruster + cart-pole, 4 seeds
    python -m experiments.estimator_choice --envs quantized_thruster --seeds 4 --arms shac,auto
    python -m experiments.estimator_choice --tiny --out /tmp/ec             # smoke run: seconds

Arms (each with its agent's defaults; nothing is tuned per env):
* ``shac``: SHAC, pathwise only (``estimator="pathwise"``, deterministic tanh policy).
* ``auto``: SHAC with ``estimator="auto"`` (tanh-Gaussian policy, α-order mixing with z = 2).
* ``score``: SHAC's windows with the score-function estimate only (``estimator="score"``).
* ``adaptive``: SHAC, pathwise, with ``adaptive_horizon=True`` (the actor's window halves where a
  per-env gradient norm exceeds ``horizon_norm_limit``; its mean over seeds is saved per iteration).
* ``dpmb``: SHAC with ``estimator="dpmb_sf"`` (pathwise with the sampled modes held fixed plus
  the modes' score terms), only on envs that expose discrete modes (``envs.base.hybrid_modes``:
  the switching cart); skipped elsewhere.
* ``ppo``: ``agents.ppo`` defaults; ``reinforce``: ``ppo.reinforce_config`` (REINFORCE with a learned
  baseline). Their iterations are set so that they take at least SHAC's environment steps.

Envs: ``quantized_thruster`` (``envs.quantized``: the velocity-free thruster whose position moves
by a quantised thrust level: every pathwise gradient is exactly zero; its optimum is known in
closed form, so returns are also reported as a fraction of it), ``cartpole`` (smooth swing-up),
``switching_cart`` and any other ``envs.make`` name (Brax's ``brax:inverted_pendulum`` with its own
+1-alive reward; ``brax:halfcheetah``): slower, pass them explicitly.

Reported: each arm's final evaluation return (mean of the last two evaluations of the
deterministic policy on fresh episodes) per seed, mean ± standard error over seeds, the
fraction of the best fixed arm's mean (and of the optimum where known); the SHAC-family arms'
mean actor gradient norm (exactly 0 for pathwise on the quantized thruster: its return is its
initial policy's); ``auto``'s effective pathwise weight (α times the share of envs that did not
fall back), its fallback envs and the bias ratio ‖d̄‖/√v_d per iteration (mean over seeds). Writes
``estimator_choice.json`` and ``estimator_choice.png`` (curves per env; α over training) into the
run folder.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments import rundir
from mbpo_grad.agents import common, ppo, shac
from mbpo_grad.envs import base as envs_base

ARMS = ("shac", "auto", "score", "adaptive", "dpmb", "ppo", "reinforce")
SHAC_ARMS = ("shac", "auto", "score", "adaptive", "dpmb")
# time limits other than the env's own: Brax's inverted pendulum at 200 steps, as in
# benchmarks/vs_brax_apg.py (its own reward, +1 per step while the pole is up: 200 is the maximum)
EPISODE_LENGTH = {"brax:inverted_pendulum": 200, "brax:halfcheetah": 200}
FIXED = ("shac", "score", "dpmb", "ppo", "reinforce")

PRESETS = {
    "default": dict(envs=("quantized_thruster", "cartpole"), arms=("shac", "auto", "ppo", "reinforce"), seeds=4,
                    iterations=300, num_envs=32, horizon=32, evals=10, shac=None, ppo=None),
    "tiny": dict(envs=("quantized_thruster",), arms=("auto", "ppo"), seeds=2, iterations=3, num_envs=4, horizon=4, evals=1,
                 shac=dict(actor_hidden=(8,), critic_hidden=(8,), critic_iterations=1, critic_minibatches=1,
                           eval_envs=2),
                 ppo=dict(policy_hidden=(8,), value_hidden=(8,), epochs=1, minibatches=1, eval_envs=2,
                          episode_length=None)),
}


def _optimum(env_name: str) -> Optional[float]:
    """The exact mean optimal return where the env has one (the quantized thruster)."""
    if env_name == "quantized_thruster":
        from mbpo_grad.envs import quantized
        return float(quantized.mean_optimal_return())
    return None


def _configs(arm: str, env: str, iterations: int, num_envs: int, horizon: int, evals: int,
             shac_kw: Dict[str, Any], ppo_kw: Dict[str, Any], shac_steps: Optional[int]):
    limit = EPISODE_LENGTH.get(env)
    if arm in SHAC_ARMS:
        est = {"shac": "pathwise", "auto": "auto", "score": "score", "adaptive": "pathwise", "dpmb": "dpmb_sf"}[arm]
        return shac.SHACConfig(env=env, estimator=est, num_envs=num_envs, horizon=horizon, iterations=iterations,
                               eval_every=max(1, iterations // evals), episode_length=limit,
                               adaptive_horizon=arm == "adaptive", **shac_kw)
    make = ppo.reinforce_config if arm == "reinforce" else (lambda env, **kw: ppo.PPOConfig(env=env, **kw))
    kw = {k: v for k, v in ppo_kw.items() if v is not None}
    if limit is not None:
        kw["episode_length"] = limit
    unroll = horizon
    its = iterations if shac_steps is None else max(1, math.ceil(shac_steps / (num_envs * unroll)))
    return make(env, num_envs=num_envs, unroll_length=unroll, iterations=its, eval_every=max(1, its // evals), **kw)


def _has_modes(env_name: str) -> bool:
    try:
        envs_base.hybrid_modes(common.make_env(env_name))
    except ValueError:
        return False
    return True


def _run(config, seeds: Sequence[int]) -> Dict[str, Any]:
    module = ppo if isinstance(config, ppo.PPOConfig) else shac
    t0 = time.perf_counter()
    fn = jax.jit(jax.vmap(module.make_train_fn(config), in_axes=(0, None)))
    keys = jax.vmap(jax.random.key)(jnp.asarray(list(seeds)))
    _, metrics, evals = jax.device_get(fn(keys, config.hparams()))
    evals = np.asarray(evals)
    steps = np.asarray(metrics["env_steps"][0])
    eval_its = common.eval_iterations(config.iterations, config.eval_every)
    out = {"config": dataclasses.asdict(config), "env_steps": int(steps[-1]),
           "eval_env_steps": steps[eval_its - 1].tolist(), "eval_return": evals.tolist(),
           "final": evals[:, -2:].mean(1).tolist(), "wall_s": time.perf_counter() - t0}
    if "grad_norm" in metrics and isinstance(config, shac.SHACConfig):
        out["grad_norm"] = float(np.mean(np.asarray(metrics["grad_norm"])))
    if "score_kl" in metrics:   # the PPO steps' mean KL(π_old ‖ π_new) per update (score_epochs >= 1)
        out["score_kl"] = float(np.mean(np.asarray(metrics["score_kl"])))
    if "horizon" in metrics:
        out["horizon"] = np.asarray(metrics["horizon"]).mean(0).tolist()
    if "alpha" in metrics:
        ratio = np.asarray(metrics["bias_norm"]) / np.maximum(np.asarray(metrics["bias_se"]), 1e-30)
        out["alpha"] = np.asarray(metrics["alpha_effective"]).mean(0).tolist()
        out["fallback_envs"] = np.asarray(metrics["fallback_envs"]).mean(0).tolist()
        out["bias_ratio"] = ratio.mean(0).tolist()
    return out


def compare(envs: Sequence[str], arms: Sequence[str], seeds: Sequence[int], *, iterations: int, num_envs: int,
            horizon: int, evals: int, shac_kw=None, ppo_kw=None, verbose: bool = True,
            save=None) -> Dict[str, Any]:
    """Every arm on every env (SHAC-family arms first; PPO arms at ≥ their env steps);
    ``save(result)`` is called after every arm (the partial result survives a crash)."""
    shac_kw, ppo_kw = dict(shac_kw or {}), dict(ppo_kw or {})
    result = {"seeds": list(seeds), "arms": list(arms), "envs": {}}
    for env in envs:
        rows, shac_steps = {}, None
        result["envs"][env] = {"optimum": _optimum(env), "arms": rows}     # filled arm by arm
        limit = EPISODE_LENGTH.get(env) or common.make_env(env).episode_length
        window = min(horizon, limit)                                       # e.g. switching_cart: 6 steps
        for arm in sorted(arms, key=lambda a: a in ("ppo", "reinforce")):
            if arm == "dpmb" and not _has_modes(env):
                if verbose:
                    print(f"{env}: dpmb skipped (the env exposes no discrete modes)", flush=True)
                continue
            cfg = _configs(arm, env, iterations, num_envs, window, evals, shac_kw, ppo_kw, shac_steps)
            if verbose:
                print(f"{env}: {arm} ({type(cfg).__name__}, {cfg.iterations} iterations) ...", flush=True)
            rows[arm] = _run(cfg, seeds)
            if arm in SHAC_ARMS:
                shac_steps = max(shac_steps or 0, rows[arm]["env_steps"])
            if save is not None:
                save(result)
            if verbose:
                f = np.asarray(rows[arm]["final"])
                print(f"  final {f.mean():.2f} ± {f.std(ddof=1) / np.sqrt(len(f)) if len(f) > 1 else 0:.2f} "
                      f"({rows[arm]['env_steps']} env steps, {rows[arm]['wall_s']:.0f} s)", flush=True)
    return result


def table(result: Dict[str, Any]) -> str:
    """Markdown: final return mean ± s.e. per env and arm, % of the optimum where known, and
    auto / best fixed arm (for negative returns, costs, best / auto: ≥ 0.95 is within 5%)."""
    arms = result["arms"]
    lines = ["| env | " + " | ".join(arms) + " | auto / best fixed | auto mean α | pathwise ‖g‖ |",
             "|---|" + "---|" * (len(arms) + 3)]
    for env, r in result["envs"].items():
        cells, means = [], {}
        for a in arms:
            if a not in r["arms"]:     # a partial result (saved while the run goes on)
                cells.append("—")
                continue
            f = np.asarray(r["arms"][a]["final"])
            means[a] = float(f.mean())
            se = f.std(ddof=1) / np.sqrt(len(f)) if len(f) > 1 else 0.0
            opt = f" ({100 * f.mean() / r['optimum']:.0f}% of opt.)" if r["optimum"] else ""
            cells.append(f"{f.mean():.1f} ± {se:.1f}{opt}")
        fixed = [means[a] for a in arms if a in FIXED and a in means]
        ratio = "—"
        if "auto" in means and fixed:
            best = max(fixed)
            if best > 0:
                ratio = f"{means['auto'] / best:.2f}"
            elif means["auto"] < 0:      # costs: best / auto (≥ 0.95: auto's cost within 5% of the best)
                ratio = f"{best / means['auto']:.2f}"
            else:
                ratio = f"{means['auto']:.1f} vs {best:.1f}"
        alpha = np.mean(r["arms"]["auto"]["alpha"]) if "auto" in r["arms"] else float("nan")
        gn = r["arms"]["shac"].get("grad_norm", float("nan")) if "shac" in r["arms"] else float("nan")
        lines.append(f"| {env} | " + " | ".join(cells) + f" | {ratio} | {alpha:.2f} | {gn:.3g} |")
    return "\n".join(lines)


def plot(result: Dict[str, Any], path: str) -> None:
    plt = rundir.pyplot()
    envs = list(result["envs"])
    fig, axes = plt.subplots(2, len(envs), figsize=(5 * len(envs), 7), squeeze=False)
    for j, env in enumerate(envs):
        r = result["envs"][env]
        ax = axes[0, j]
        for i, (arm, row) in enumerate(r["arms"].items()):
            y = np.asarray(row["eval_return"])
            x = np.asarray(row["eval_env_steps"])
            ax.plot(x, y.mean(0), color=f"C{i}", label=arm)
            ax.fill_between(x, y.min(0), y.max(0), color=f"C{i}", alpha=0.15)
        if r["optimum"]:
            ax.axhline(r["optimum"], color="k", ls="--", lw=0.8, label="optimum")
        means = [np.mean(np.asarray(row["eval_return"]), 0) for row in r["arms"].values()]
        top = max(float(np.max(m)) for m in means)
        if min(float(np.min(m)) for m in means) < -10.0 * (abs(top) + 1.0):   # a diverging arm
            ax.set_yscale("symlog", linthresh=max(1.0, abs(top)))
        ax.set_title(env)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("evaluation return")
        ax.legend(fontsize=8)
        ax = axes[1, j]
        if "auto" in r["arms"]:
            ax.plot(r["arms"]["auto"]["alpha"], color="C1")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("iteration")
        ax.set_ylabel("auto: α (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = rundir.CliParser(prog="python -m experiments.estimator_choice", description=__doc__.split("\n")[0])
    p.add_argument("--envs", default=None, help="comma-separated env names (default quantized_thruster,cartpole)")
    p.add_argument("--arms", default=None, help=f"comma-separated from {','.join(ARMS)} (default shac,auto,ppo,reinforce)")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..S-1 (default 4)")
    p.add_argument("--iterations", type=int, default=None, help="SHAC-family iterations (default 300)")
    p.add_argument("--num-envs", type=int, default=None, help="parallel envs of every arm (default 32)")
    p.add_argument("--horizon", type=int, default=None, help="SHAC window = PPO unroll length (default 32)")
    p.add_argument("--eval-envs", type=int, default=None,
                   help="evaluation episodes of every arm (default: each agent's own, SHAC 32, PPO 16)")
    p.add_argument("--tiny", action="store_true", help="smoke run: auto and ppo on the quantized thruster, 2 seeds, 3 iterations, (8,) MLPs")
    p.add_argument("--out", default=None, help="run folder (default runs/estimator_choice-<timestamp>)")
    args = p.parse_args(argv)
    pre = PRESETS["tiny" if args.tiny else "default"]
    envs = tuple(args.envs.split(",")) if args.envs else pre["envs"]
    arms = tuple(args.arms.split(",")) if args.arms else pre["arms"]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        p.fail(f"--arms: unknown arm(s) {bad}; choose from {', '.join(ARMS)}")
    seeds = args.seeds if args.seeds is not None else pre["seeds"]
    for flag, v in (("--seeds", seeds), ("--iterations", args.iterations), ("--num-envs", args.num_envs),
                    ("--horizon", args.horizon)):
        if v is not None and v < 1:
            p.fail(f"{flag} must be >= 1, got {v}")
    if args.eval_envs is not None and args.eval_envs < 1:
        p.fail(f"--eval-envs must be >= 1, got {args.eval_envs}")
    out = rundir.new_run_dir("estimator_choice", out=args.out)
    shac_kw, ppo_kw = dict(pre["shac"] or {}), dict(pre["ppo"] or {})
    if args.eval_envs is not None:
        shac_kw["eval_envs"] = ppo_kw["eval_envs"] = args.eval_envs

    def save(result):
        with open(os.path.join(out, "estimator_choice.json"), "w") as f:
            json.dump({**result, "table": table(result)}, f, indent=1)

    result = compare(envs, arms, list(range(seeds)), iterations=args.iterations or pre["iterations"],
                     num_envs=args.num_envs or pre["num_envs"], horizon=args.horizon or pre["horizon"],
                     evals=pre["evals"], shac_kw=shac_kw, ppo_kw=ppo_kw, save=save)
    print(table(result))
    save(result)
    plot(result, os.path.join(out, "estimator_choice.png"))
    print(f"wrote {out}/estimator_choice.json and estimator_choice.png")
    return result


if __name__ == "__main__":
    main()
