"""This project's PPO (``mbpo_grad.agents.ppo``) against Brax's PPO, same env, same settings, several seeds.

One after the other in one process, seed by seed (Brax seed s, ours seed s, Brax seed s+1, …,
so load from other processes on a shared machine hits both alike), on the same Brax
environment, backend, episode length and number of parallel envs:

  brax  ``brax.training.agents.ppo.train`` with ``SHARED`` settings (below); its networks are
        the sizes of ours by default (``--brax-networks matched``: policy and value MLPs of
        ``(64, 64)``, tanh), or Brax's own defaults (``--brax-networks default``: policy
        4×32, value 5×256, swish); deterministic evaluation on ``eval_envs`` envs
  ours  ``mbpo_grad.agents.ppo`` (``PPOConfig`` with the same settings), trained by the pure
        ``make_train_fn`` (one ``jit``: compiled ahead of time, so compilation and the run are
        timed apart), deterministic evaluation on the same number of envs

Both collect ``num_envs × unroll_length`` transitions per iteration (Brax: ``batch_size ×
num_minibatches = num_envs``, one unroll per training step), make ``epochs × minibatches``
Adam steps on minibatches of ``num_envs·unroll_length / minibatches`` transitions, and are
evaluated at the same env steps: Brax's ``num_evals − 1`` epochs of
``ceil(env_steps / ((num_evals − 1)·num_envs·unroll_length))`` iterations set our
``iterations`` and ``eval_every``, so both train exactly the same number of env steps.

Matched: unroll length, minibatches, epochs, Adam (lr, b1 0.9, b2 0.999, eps 1e-8, constant
rate), γ, GAE λ, clip ε, entropy cost, reward scaling, observation normalisation, advantage
normalisation, the value-loss weight (Brax's ``vf_loss_coefficient`` c multiplies
½·E[(V − y)²], ours ``value_cost`` E[(V − y)²]: c = 0.5 ↔ 0.25), gradient clipping (off), no
start-time stagger (``stagger=False``, as Brax), tanh-Gaussian policy with a state-dependent σ,
network widths. Not matched (the two code bases differ; ``UNMATCHED`` lists them in the JSON):
σ's parametrisation, the critic's activation, the weight initialisation, where advantages are
computed and normalised, minibatches of transitions vs of whole unrolls, time-limit handling,
when the observation statistics are updated, the entropy estimate's noise, our non-finite guard.

Reported per env: every seed's final and best deterministic evaluation return (the
evaluations after training steps; Brax's extra evaluation at step 0 is recorded, not scored),
the mean over evaluations (an area-under-the-curve figure: how fast), mean ± standard error
over seeds, each training call's wall clock (from before the env is built: compilation
included), split into "set-up + compile" and "run" — ours exactly (env, agent and ahead-of-time
compile; then the one compiled call), Brax's estimated (``steady_estimate``: every epoch and
every evaluation at the median of the later ones; set-up + compile = the rest, marked ~) — env
steps, and a verdict per score: with Δ = mean_ours − mean_brax and s = √(se_ours² + se_brax²),
"equal within seed noise" if |Δ| ≤ 2s, else "better" or "worse" (``verdict``).

    python -m benchmarks.ppo_vs_brax                      # inverted pendulum + double pendulum, 3 seeds
    python -m benchmarks.ppo_vs_brax --envs inverted_pendulum --seeds 5
    python -m benchmarks.ppo_vs_brax --tiny               # smoke run: Brax's trivial `fast` env, toy sizes
"""
from __future__ import annotations

import functools
import math
import time
from typing import Dict, List, Sequence

import jax
import numpy as np

from benchmarks import _common as C

NAME = "ppo_vs_brax"
# env -> (brax name, backend, episode length, default env-step budget, reward scale)
ENVS = {
    # +1 per step until |pole angle| > 0.2; values ≤ 1/(1 − γ) ≈ 33, reward scale 1
    "inverted_pendulum": ("inverted_pendulum", "generalized", 200, 200_000, 1.0),
    # ≈ 9.4 per step while the tip is above y = 1; reward scale 0.1 keeps the values O(30)
    "inverted_double_pendulum": ("inverted_double_pendulum", "generalized", 200, 200_000, 0.1),
}
# The PPO settings both agents get (per env: the reward scale above).
SHARED = {
    "num_envs": 64,
    "unroll_length": 16,
    "minibatches": 8,
    "epochs": 4,
    "lr": 3e-4,
    "gamma": 0.97,
    "lam": 0.95,
    "clip_eps": 0.3,
    "entropy_cost": 1e-2,
    "value_cost": 0.25,          # Brax vf_loss_coefficient 0.5 (Brax multiplies by ½)
    "obs_norm": True,
    "normalize_advantage": True,
    "max_grad_norm": None,       # Brax's default: no clipping; ours: max_grad_norm = 0 disables it
    "hidden": (64, 64),          # policy and value widths (ours' defaults)
    "eval_envs": 128,
}
# --tiny's default env: Brax's trivial unit-test env (no physics; ``brax.envs.fast.Fast``), so the
# smoke run compiles in seconds; ``--tiny --envs inverted_pendulum`` runs a physics env at toy sizes.
TINY_ENVS = {"fast": ("fast", "generalized", 16, 32, 1.0)}
TINY = {"num_envs": 4, "unroll_length": 4, "minibatches": 2, "epochs": 1, "hidden": (8, 8), "eval_envs": 4}
UNMATCHED = [
    "policy sigma: Brax softplus(raw) + 0.001 (starts near 0.69); ours exp(soft_clip(raw, -5, 2)) (starts near 1.0)",
    "critic activation: ours ELU, Brax the same activation as its policy (tanh with --brax-networks matched, "
    "swish with default); widths differ too with default (Brax 4x32 policy, 5x256 value)",
    "initialisation: Brax lecun_uniform kernels, ours Flax's default lecun_normal (same variance)",
    "advantages: Brax recomputes GAE with the current critic in every minibatch and normalises them per "
    "minibatch; ours computes them once per iteration with the critic before the update, normalised over "
    "the iteration's batch",
    "minibatches: Brax shuffles whole unrolls (num_envs/minibatches sequences of unroll_length), ours "
    "shuffles single transitions (the same number per minibatch)",
    "time limit: Brax (bootstrap_on_timeout=False) gives the cut transition advantage 0 and target V(o) "
    "(it is dropped); ours bootstraps it with V(o')",
    "observation statistics: Brax updates them with the batch before its SGD (so rho != 1 at the first "
    "step); ours holds them fixed during the iteration, updates after; ours clips normalised obs at +-10",
    "entropy: both the reparameterised estimate -log pi(a~); Brax draws fresh noise per minibatch, ours "
    "reuses the stored noise",
    "ours skips an update whose gradient norm is non-finite or > 1e6 (guards.skip_nonfinite); Brax has no guard",
]


def schedule(env_steps: int, num_envs: int, unroll_length: int, num_evals: int) -> Dict[str, int]:
    """Brax's iteration count for a budget, shared by ours: ``epochs_between_evals`` = ⌈env_steps /
    ((num_evals − 1)·num_envs·unroll_length)⌉ training steps per Brax epoch, ``num_evals − 1`` epochs."""
    for name, v in (("env_steps", env_steps), ("num_envs", num_envs), ("unroll_length", unroll_length)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if isinstance(num_evals, bool) or not isinstance(num_evals, int) or num_evals < 2:
        raise ValueError(f"num_evals must be an int >= 2 (Brax counts the step-0 evaluation), got {num_evals!r}")
    per_iter = num_envs * unroll_length
    blocks = num_evals - 1
    eval_every = int(math.ceil(env_steps / (blocks * per_iter)))
    return {"iterations": blocks * eval_every, "eval_every": eval_every, "blocks": blocks,
            "env_steps": blocks * eval_every * per_iter, "env_steps_per_iteration": per_iter}


def _check_settings(s: Dict) -> None:
    if s["num_envs"] % s["minibatches"]:
        raise ValueError(f"num_envs ({s['num_envs']}) must be a multiple of minibatches ({s['minibatches']}): "
                         "Brax's minibatches are whole unrolls of num_envs / minibatches envs")


def brax_network_factory(kind: str, hidden: Sequence[int]):
    from brax.training.agents.ppo import networks as ppo_networks

    if kind == "default":
        return ppo_networks.make_ppo_networks
    if kind == "matched":
        import flax.linen as nn

        return functools.partial(ppo_networks.make_ppo_networks, policy_hidden_layer_sizes=tuple(hidden),
                                 value_hidden_layer_sizes=tuple(hidden), activation=nn.tanh)
    raise ValueError(f"brax_networks must be 'matched' or 'default', got {kind!r}")


def steady_estimate(epoch_s: List[float], eval_s: List[float]) -> float:
    """Brax's run without compilation and set-up: every epoch (evaluation) at the median of the
    epochs (evaluations) after the first two — measured here, Brax's second call of a program
    takes as long as its first, compiling (``epoch_s``, ``eval_s`` in the JSON) — or, with fewer
    than three, at the fastest after the first (then never above the measured total); NaN with
    a single epoch (nothing to compare with)."""
    def per_call(xs):
        return C.median(xs[2:]) if len(xs) >= 3 else min(xs[1:])

    if len(epoch_s) < 2 or len(eval_s) < 2:
        return float("nan")
    return len(epoch_s) * per_call(epoch_s) + len(eval_s) * per_call(eval_s)


def run_brax(brax_name: str, backend: str, episode_length: int, s: Dict, sched: Dict, reward_scale: float,
             seed: int, networks: str) -> Dict:
    """One seed of ``brax.training.agents.ppo.train``; wall clock from before the env is built."""
    from brax import envs as brax_envs
    from brax.training.agents.ppo import train as ppo

    t0 = time.perf_counter()
    env = brax_envs.get_environment(brax_name, backend=backend)
    evals: List[Dict] = []

    def progress(step, metrics):
        evals.append({"wall_s": time.perf_counter() - t0, "env_steps": int(step),
                      "eval_return": float(metrics["eval/episode_reward"]),
                      "eval_s": float(metrics.get("eval/epoch_eval_time", float("nan"))),
                      "train_walltime_s": float(metrics.get("training/walltime", 0.0))})

    ppo.train(environment=env, num_timesteps=sched["env_steps"], episode_length=episode_length,
              num_envs=s["num_envs"], unroll_length=s["unroll_length"], num_minibatches=s["minibatches"],
              batch_size=s["num_envs"] // s["minibatches"], num_updates_per_batch=s["epochs"],
              learning_rate=s["lr"], entropy_cost=s["entropy_cost"], discounting=s["gamma"],
              gae_lambda=s["lam"], clipping_epsilon=s["clip_eps"], reward_scaling=reward_scale,
              normalize_observations=s["obs_norm"], normalize_advantage=s["normalize_advantage"],
              vf_loss_coefficient=2.0 * s["value_cost"], max_grad_norm=s["max_grad_norm"],
              network_factory=brax_network_factory(networks, s["hidden"]),
              num_evals=sched["blocks"] + 1, num_eval_envs=s["eval_envs"], deterministic_eval=True, seed=seed,
              progress_fn=progress)
    wall = time.perf_counter() - t0
    walls = [e["train_walltime_s"] for e in evals]
    epochs = [b - a for a, b in zip(walls[:-1], walls[1:])]
    eval_times = [e["eval_s"] for e in evals]
    steady = steady_estimate(epochs, eval_times)
    points = evals[1:]  # the evaluations after training; evals[0] is Brax's step-0 evaluation
    return {"agent": "brax", "seed": seed, "wall_s": wall, "compile_s": wall - steady, "steady_s": steady,
            "compile_is_estimate": True, "epoch_s": epochs, "eval_s": eval_times, "initial_eval": evals[0],
            "points": points, "env_steps": points[-1]["env_steps"] if points else 0}


def ours_config(brax_name: str, episode_length: int, s: Dict, sched: Dict, reward_scale: float):
    from mbpo_grad.agents import ppo

    return ppo.PPOConfig(
        env=f"brax:{brax_name}", num_envs=s["num_envs"], unroll_length=s["unroll_length"],
        episode_length=episode_length, iterations=sched["iterations"], epochs=s["epochs"],
        minibatches=s["minibatches"], policy_hidden=tuple(s["hidden"]), value_hidden=tuple(s["hidden"]),
        normalize_advantage=s["normalize_advantage"], obs_norm=s["obs_norm"], stagger=False,
        eval_every=sched["eval_every"], eval_envs=s["eval_envs"], lr=s["lr"], clip_eps=s["clip_eps"],
        gamma=s["gamma"], lam=s["lam"], entropy_cost=s["entropy_cost"], value_cost=s["value_cost"],
        max_grad_norm=0.0 if s["max_grad_norm"] is None else float(s["max_grad_norm"]),
        reward_scale=reward_scale)


def run_ours(brax_name: str, backend: str, episode_length: int, s: Dict, sched: Dict, reward_scale: float,
             seed: int) -> Dict:
    """One seed of ``mbpo_grad.agents.ppo`` through ``make_train_fn``: compiled ahead of time, then run."""
    from mbpo_grad import envs
    from mbpo_grad.agents import ppo

    t0 = time.perf_counter()
    env = envs.make(f"brax:{brax_name}", backend=backend, episode_length=episode_length)
    cfg = ours_config(brax_name, episode_length, s, sched, reward_scale)
    train_fn = ppo.make_train_fn(cfg, env=env)
    key, hp = jax.random.key(seed), cfg.hparams()
    t1 = time.perf_counter()
    compiled = jax.jit(train_fn).lower(key, hp).compile()
    t2 = time.perf_counter()
    _, metrics, eval_returns = jax.block_until_ready(compiled(key, hp))
    t3 = time.perf_counter()
    steps = np.asarray(metrics["env_steps"])
    eval_steps = steps[sched["eval_every"] - 1::sched["eval_every"]]
    points = [{"env_steps": int(n), "eval_return": float(r)} for n, r in zip(eval_steps, np.asarray(eval_returns))]
    skipped = int(np.asarray(metrics["total_skipped"])[-1])
    return {"agent": "ours", "seed": seed, "wall_s": t3 - t0, "build_s": t1 - t0, "compile_s": t2 - t0,
            "compile_only_s": t2 - t1, "steady_s": t3 - t2, "compile_is_estimate": False, "points": points,
            "env_steps": int(steps[-1]), "skipped_updates": skipped,
            "final_entropy": float(np.asarray(metrics["entropy"])[-1])}


def scores(run: Dict) -> Dict[str, float]:
    rets = [p["eval_return"] for p in run["points"]]
    if not rets:
        return {"final": float("nan"), "best": float("nan"), "mean_eval": float("nan")}
    return {"final": rets[-1], "best": max(rets), "mean_eval": float(np.mean(rets))}


def mean_se(xs: Sequence[float]) -> Dict[str, float]:
    """Mean and standard error (sample s.d. / √n; NaN for one value)."""
    xs = np.asarray([float(x) for x in xs])
    m = float(np.mean(xs)) if xs.size else float("nan")
    se = float(np.std(xs, ddof=1) / math.sqrt(xs.size)) if xs.size > 1 else float("nan")
    return {"mean": m, "se": se, "n": len(xs)}


def verdict(ours: Dict[str, float], brax: Dict[str, float], k: float = 2.0) -> Dict:
    """Δ = mean_ours − mean_brax against k·√(se_ours² + se_brax²): "equal within seed noise" when
    |Δ| ≤ k·s, else "better" (Δ > 0) or "worse"; "n/a" when either side has fewer than two seeds."""
    if ours["n"] < 2 or brax["n"] < 2:
        return {"delta": ours["mean"] - brax["mean"], "combined_se": float("nan"), "verdict": "n/a (one seed)"}
    delta = ours["mean"] - brax["mean"]
    s = math.sqrt(ours["se"] ** 2 + brax["se"] ** 2)
    if abs(delta) <= k * s:
        word = "equal within seed noise"
    else:
        word = "better" if delta > 0 else "worse"
    return {"delta": delta, "combined_se": s, "k": k, "verdict": word}


def summarise(runs: List[Dict]) -> Dict:
    out: Dict = {"agents": {}}
    for agent in ("brax", "ours"):
        rs = [r for r in runs if r["agent"] == agent]
        sc = [scores(r) for r in rs]
        out["agents"][agent] = {
            "seeds": [r["seed"] for r in rs],
            **{name: mean_se([x[name] for x in sc]) for name in ("final", "best", "mean_eval")},
            "per_seed": sc,
            "wall_s": mean_se([r["wall_s"] for r in rs]),
            "compile_s": mean_se([r["compile_s"] for r in rs]),
            "steady_s": mean_se([r["steady_s"] for r in rs]),
            "env_steps": [r["env_steps"] for r in rs],
        }
    a = out["agents"]
    if a["brax"]["seeds"] and a["ours"]["seeds"]:
        out["verdict"] = {name: verdict(a["ours"][name], a["brax"][name]) for name in ("final", "best", "mean_eval")}
    return out


def _pm(d: Dict, fmt: str = ".1f") -> str:
    if not np.isfinite(d["se"]):
        return format(d["mean"], fmt)
    return f"{format(d['mean'], fmt)} ± {format(d['se'], fmt)}"


def markdown(payload: Dict) -> str:
    rows, seed_rows, lines = [], [], []
    for name, entry in payload["envs"].items():
        summ = entry.get("summary")
        if not summ:
            continue
        for agent, a in summ["agents"].items():
            rows.append({"env": name, "agent": agent, "seeds": len(a["seeds"]),
                         "env steps": ", ".join(f"{n:,}" for n in sorted(set(a["env_steps"]))),
                         "final": _pm(a["final"]), "best": _pm(a["best"]), "mean over evals": _pm(a["mean_eval"]),
                         "wall s": _pm(a["wall_s"], ".0f"), "setup+compile s": _pm(a["compile_s"], ".0f"),
                         "run s": _pm(a["steady_s"], ".0f")})
        for r in entry["runs"]:
            sc = scores(r)
            seed_rows.append({"env": name, "agent": r["agent"], "seed": r["seed"], "final": sc["final"],
                              "best": sc["best"], "mean over evals": sc["mean_eval"], "wall s": r["wall_s"],
                              "setup+compile s": (f"~{r['compile_s']:.0f}" if r["compile_is_estimate"]
                                                  else r["compile_s"]),
                              "returns": " ".join(f"{p['eval_return']:.0f}" for p in r["points"])})
        for score, v in summ.get("verdict", {}).items():
            lines.append(f"{name} {score}: ours − brax = {v['delta']:+.1f} (2·s.e. = {2 * v['combined_se']:.1f}): "
                         f"**{v['verdict']}**")
    cols = ["env", "agent", "seeds", "env steps", "final", "best", "mean over evals", "wall s", "setup+compile s",
            "run s"]
    seed_cols = ["env", "agent", "seed", "final", "best", "mean over evals", "wall s", "setup+compile s", "returns"]
    fmt = {"final": ".1f", "best": ".1f", "mean over evals": ".1f", "wall s": ".0f", "setup+compile s": ".0f"}
    return (C.markdown_table(rows, cols) + "\n\n" + C.markdown_table(seed_rows, seed_cols, fmt) + "\n\n"
            + "\n".join(f"* {x}" for x in lines))


def main(argv=None) -> Dict:
    p = C.parser(NAME, __doc__.split("\n")[0])
    p.add_argument("--envs", default=None, help=f"comma-separated subset of {','.join(ENVS)} (default: both)")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0 … n−1, each its own training call (default 3)")
    p.add_argument("--env-steps", type=int, default=None, help="training env steps per run (default per env)")
    p.add_argument("--num-envs", type=int, default=None, help=f"parallel envs (default {SHARED['num_envs']})")
    p.add_argument("--num-evals", type=int, default=None,
                   help="evaluations per run counting Brax's step-0 one (default 11: 10 scored)")
    p.add_argument("--backend", default=None, choices=("generalized", "positional", "spring", "mjx"),
                   help="Brax backend for every env (default per env: ENVS)")
    p.add_argument("--brax-networks", default="matched", choices=("matched", "default"),
                   help="Brax's networks: ours' widths and tanh (matched) or Brax's defaults")
    args = p.parse_args(argv)
    if args.tiny:  # a smoke run is compile-bound: lower XLA's CPU code-generation effort
        from experiments.rundir import cpu_fast_compile

        cpu_fast_compile()
    table = dict(ENVS, **TINY_ENVS)
    names = args.envs.split(",") if args.envs else list(TINY_ENVS if args.tiny else ENVS)
    for n in names:
        if n not in table:
            p.error(f"--envs: unknown env {n!r}; expected from {list(table)}")
    s = dict(SHARED, **(TINY if args.tiny else {}))
    if args.num_envs:
        s["num_envs"] = args.num_envs
    _check_settings(s)
    n_seeds = args.seeds or (2 if args.tiny else 3)
    num_evals = args.num_evals or (3 if args.tiny else 11)
    payload = {"benchmark": NAME, "machine": C.machine(), "settings": dict(s, hidden=list(s["hidden"])),
               "brax_networks": args.brax_networks, "unmatched": UNMATCHED, "envs": {}}
    for name in names:
        brax_name, backend, episode_length, env_steps, reward_scale = table[name]
        backend = args.backend or ("spring" if args.tiny else backend)
        if args.tiny:
            episode_length, env_steps = 16, 4 * s["num_envs"] * s["unroll_length"]
        env_steps = args.env_steps or env_steps
        sched = schedule(env_steps, s["num_envs"], s["unroll_length"], num_evals)
        entry = {"brax_env": brax_name, "backend": backend, "episode_length": episode_length,
                 "reward_scale": reward_scale, "schedule": sched, "runs": []}
        payload["envs"][name] = entry
        for seed in range(n_seeds):
            for agent in ("brax", "ours"):
                C.log(f"  {name}: {agent} seed {seed} ({sched['env_steps']:,} env steps, {backend})")
                if agent == "brax":
                    run = run_brax(brax_name, backend, episode_length, s, sched, reward_scale, seed,
                                   args.brax_networks)
                else:
                    run = run_ours(brax_name, backend, episode_length, s, sched, reward_scale, seed)
                sc = scores(run)
                C.log(f"    final {sc['final']:.1f}  best {sc['best']:.1f}  wall {run['wall_s']:.0f} s "
                      f"(set-up + compile {'~' if run['compile_is_estimate'] else ''}{run['compile_s']:.0f} s)")
                entry["runs"].append(run)
                C.write_json(args.out, payload)
        entry["summary"] = summarise(entry["runs"])
        C.write_json(args.out, payload)
    payload["markdown"] = markdown(payload)
    C.write_json(args.out, payload)
    print(payload["markdown"])
    return payload


if __name__ == "__main__":
    main()
