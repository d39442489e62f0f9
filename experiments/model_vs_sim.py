"""The same n-step pathwise gradient through the simulator and through a learned model.

    python -m experiments.model_vs_sim                     # --quick (default): pendulum, a few minutes on 2 CPU cores
    python -m experiments.model_vs_sim --env cartpole --ns 1 4 16 full --seeds 3 --out runs/mvs

Where does model error overtake the variance reduction of short unrolls? For each seed:

1. a policy π_w (deterministic tanh MLP, or the Gaussian one with ``--estimator svg``) is
   initialised; ``data_envs`` episodes are collected from the simulator with exploration
   noise a = clip(π(s) + σ_x ε, −1, 1);
2. a probabilistic ensemble (``mg.models.gaussian_ensemble``) is fitted to the transitions
   (on observations: (obs, a) → (Δobs, r));
3. for every n, the truncated objective J_n(w) = mean_b Σ_{t<n} γ^t r_t from the same start
   states is differentiated by the engine (``mg.pathwise_objective``) through
   - ``sim``: the simulator (the reference),
   - ``model``: the ensemble with sampled noise (a random elite per step and rollout plus its
     Gaussian noise: PETS "TS-1"), and
   - ``model_mean``: the ensemble's mean prediction (no model noise),
   on ``batches`` independent batches of ``batch_size`` start states. The reference gradient
   g_n is the simulator's gradient averaged over all batches (batches × batch_size states).

Per n and dynamics (metrics.csv, step = 0, seed = the seed):
``grad_var`` E‖ĝ − mean ĝ‖² across batches; ``grad_bias`` ‖mean ĝ − g_n‖ (≈ 0 for sim);
``grad_mse`` mean ‖ĝ − g_n‖²; ``grad_cos`` cos(mean ĝ, g_n); ``grad_norm`` ‖mean ĝ‖;
``grad_mse_rel`` = grad_mse / ‖g_n‖²; ``obs_error`` mean ‖obs_model(n) − obs_sim(n)‖ of the
mean model's closed-loop prediction n steps ahead (same policy, same start states); ``model_holdout_mse``.

The crossover n* (summary.json ``crossover_n``) is the smallest n from which on the model's
gradient MSE exceeds the simulator's for every longer unroll: beyond it model error dominates
the variance (``model_not_worse_ns`` lists the n where the model's MSE is not larger).
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence

import numpy as np

from experiments import rundir as RD

SCRIPT = "model_vs_sim"
DYNAMICS = ("sim", "model", "model_mean")
METRICS = ("grad_var", "grad_bias", "grad_mse", "grad_mse_rel", "grad_cos", "grad_norm", "obs_error",
           "model_holdout_mse")
ENVS = ("pendulum", "cartpole", "lqr")

PRESETS = {
    "tiny": dict(ns=(2, "full"), episode_length=16, seeds=1, data_envs=16, hidden=(8,), model_hidden=(16,),
                 ensemble=3, elites=2, epochs=5, batches=8, batch_size=8),
    "quick": dict(ns=(1, 2, 4, 8, 16, 32, 64, "full"), episode_length=100, seeds=2, data_envs=64, hidden=(32, 32),
                  model_hidden=(128, 128), ensemble=5, elites=3, epochs=40, batches=64, batch_size=16),
    "full": dict(ns=(1, 2, 4, 8, 16, 32, 64, 128, "full"), episode_length=200, seeds=5, data_envs=256,
                 hidden=(64, 64), model_hidden=(200, 200, 200), ensemble=7, elites=5, epochs=100, batches=256,
                 batch_size=32),
}


def _make_env(name: str, T: int):
    if name == "lqr":
        from experiments.compare_unroll_lengths import make_env

        return make_env("lqr", T)
    from mbpo_grad import envs

    return envs.make(name, episode_length=T)


def collect(env, policy, params, key, *, episodes: int, explore_std: float = 0.5):
    """Transitions {s, a, r, s_next} on observations from ``episodes`` simulator episodes (one lax.scan)."""
    import jax
    import jax.numpy as jnp

    from mbpo_grad.objectives import batched_unroll

    T = env.episode_length
    k_reset, k_eps, k_xi = jax.random.split(key, 3)
    s0 = jax.vmap(env.reset)(jax.random.split(k_reset, episodes))
    eps = jax.random.normal(k_eps, (T + 1, episodes, env.action_size))

    def behaviour(p, s, e):
        a = policy.sample(p, env.observe(s), None)
        return jnp.clip(a + explore_std * e, -1.0, 1.0)

    xi = jax.random.normal(k_xi, (T, episodes) + tuple(env.noise_shape)) if tuple(env.noise_shape) else None
    traj = batched_unroll(behaviour, params, env.step, env.reward, s0, horizon=T, policy_noise=eps,
                          dynamics_noise=xi, done=env.done)
    obs = jax.vmap(jax.vmap(env.observe))(traj.states)                       # [E, T+1, d]
    live = traj.alive[:, :-1] > 0                                            # [E, T]
    data = {"obs": obs[:, :-1], "action": traj.actions[:, :-1], "reward": traj.rewards, "next_obs": obs[:, 1:]}
    return data, live


def make_probe(env, policy, model, n: int, batches: int, batch_size: int, gamma: float):
    """jit(probe)(policy_params, model_params, key) -> per-dynamics statistics of ĝ_n (one program per n)."""
    import jax
    import jax.flatten_util
    import jax.numpy as jnp

    import mbpo_grad as mg
    from mbpo_grad.objectives import batched_unroll

    stochastic = tuple(policy.noise_shape) != (0,)
    dyn = tuple(env.noise_shape) != ()

    def probe(pp, mp, key):
        k_s0, k_eps, k_xi, k_model = jax.random.split(key, 4)
        s0 = jax.vmap(env.reset)(jax.random.split(k_s0, batches * batch_size))
        s0 = jax.tree_util.tree_map(lambda x: x.reshape((batches, batch_size) + x.shape[1:]), s0)
        obs0 = jax.vmap(jax.vmap(env.observe))(s0)                                # [M, B, d]
        eps = (jax.random.normal(k_eps, (batches, n + 1, batch_size) + tuple(policy.noise_shape))
               if stochastic else None)
        xi = jax.random.normal(k_xi, (batches, n, batch_size) + tuple(env.noise_shape)) if dyn else None
        mnoise = model.sample_noise(k_model, (batches, n, batch_size))

        def pi_sim(p, s, e):
            return policy.sample(p, env.observe(s), e)

        def pi_model(p, ms, e):
            return policy.sample(p, model.observe(ms), e)

        step_m, reward_m = model.as_step(mp), model.as_reward()

        def g_sim(s, e, x):
            return jax.grad(lambda p: mg.pathwise_objective(pi_sim, p, env.step, env.reward, s, horizon=n,
                                                            gamma=gamma, policy_noise=e, dynamics_noise=x,
                                                            done=env.done))(pp)

        def g_model(o, e, x):
            ms = model.initial_state(o)
            return jax.grad(lambda p: mg.pathwise_objective(pi_model, p, step_m, reward_m, ms, horizon=n,
                                                            gamma=gamma, policy_noise=e, dynamics_noise=x))(pp)

        flat = lambda g: jax.flatten_util.ravel_pytree(g)[0]  # noqa: E731
        e_ax = 0 if stochastic else None
        G = {
            "sim": jax.vmap(lambda s, e, x: flat(g_sim(s, e, x)), in_axes=(0, e_ax, 0 if dyn else None))(s0, eps, xi),
            "model": jax.vmap(lambda o, e, x: flat(g_model(o, e, x)), in_axes=(0, e_ax, 0))(obs0, eps, mnoise),
            "model_mean": jax.vmap(lambda o, e: flat(g_model(o, e, None)), in_axes=(0, e_ax))(obs0, eps),
        }
        ref = jnp.mean(G["sim"], axis=0)
        ref_sq = jnp.sum(ref ** 2)
        out = {}
        for name, g in G.items():
            mean = jnp.mean(g, axis=0)
            var = jnp.sum(jnp.var(g, axis=0, ddof=1))
            mse = jnp.mean(jnp.sum((g - ref) ** 2, axis=1))
            cos = jnp.sum(mean * ref) / jnp.maximum(jnp.sqrt(jnp.sum(mean ** 2) * ref_sq), 1e-30)
            out[name] = {"grad_var": var, "grad_bias": jnp.sqrt(jnp.sum((mean - ref) ** 2)), "grad_mse": mse,
                         "grad_mse_rel": mse / jnp.maximum(ref_sq, 1e-30), "grad_cos": cos,
                         "grad_norm": jnp.sqrt(jnp.sum(mean ** 2))}
        # closed-loop prediction error n steps ahead: the mean model vs the simulator, policy mode
        s_flat = jax.tree_util.tree_map(lambda x: x[0], s0)
        tr_sim = batched_unroll(lambda p, s, e: pi_sim(p, s, None), pp, env.step, env.reward, s_flat, horizon=n,
                                done=env.done)
        tr_mod = batched_unroll(lambda p, s, e: pi_model(p, s, None), pp, step_m, reward_m,
                                model.initial_state(obs0[0]), horizon=n)
        o_sim = jax.vmap(env.observe)(jax.tree_util.tree_map(lambda x: x[:, -1], tr_sim.states))
        o_mod = tr_mod.states.obs[:, -1]
        err = jnp.mean(jnp.sqrt(jnp.sum((o_sim - o_mod) ** 2, axis=-1)))
        for name in out:
            out[name]["obs_error"] = err if name != "sim" else jnp.zeros(())
        return out

    return jax.jit(probe)


def run(cfg: Dict[str, Any], run_dir: str, *, progress: bool = True) -> Dict[str, Any]:
    """Run the experiment of ``cfg`` into ``run_dir``; returns the summary."""
    import jax
    from tqdm.auto import tqdm

    from mbpo_grad.models import gaussian_ensemble
    from mbpo_grad.policies import deterministic, gaussian

    t_start = time.perf_counter()
    T = cfg["episode_length"]
    env = _make_env(cfg["env"], T)
    hidden = tuple(cfg["hidden"])
    policy = (deterministic(env.obs_size, env.action_size, hidden) if cfg["estimator"] == "dpmb"
              else gaussian(env.obs_size, env.action_size, hidden))
    model = gaussian_ensemble(env.obs_size, env.action_size, cfg["ensemble"], cfg["elites"],
                              hidden=tuple(cfg["model_hidden"]), epochs=cfg["epochs"])
    ns = sorted({T if n == "full" else min(int(n), T) for n in cfg["ns"]})
    probes = {n: make_probe(env, policy, model, n, cfg["batches"], cfg["batch_size"], cfg["gamma"]) for n in ns}
    collect_jit = jax.jit(lambda p, k: collect(env, policy, p, k, episodes=cfg["data_envs"],
                                               explore_std=cfg["explore_std"]))
    table = RD.MetricsTable()
    label = f"{cfg['env']}/{cfg['estimator']}"
    fits = {}
    bar = tqdm(total=len(cfg["seeds"]) * (1 + len(ns)), desc=SCRIPT, disable=not progress, file=sys.stderr)
    for seed in cfg["seeds"]:
        k_pol, k_data, k_fit, k_probe = jax.random.split(jax.random.PRNGKey(seed), 4)
        pp = policy.init(k_pol)
        data, live = collect_jit(pp, k_data)
        live = np.asarray(live).reshape(-1)
        flat = {k: np.asarray(v).reshape((-1,) + np.asarray(v).shape[2:])[live] for k, v in data.items()}
        mp, fm = model.fit(model.init(k_fit), flat, k_fit)
        holdout = float(np.mean(np.asarray(fm["holdout_mse"])[np.asarray(fm["elites"])]))
        fits[seed] = {"transitions": int(live.sum()), "holdout_mse": holdout}
        bar.set_postfix_str(f"seed {seed}: model fitted on {int(live.sum())} transitions, holdout MSE {holdout:.3g}")
        bar.update(1)
        for n in ns:
            out = jax.device_get(probes[n](pp, mp, jax.random.fold_in(k_probe, n)))
            for dyn in DYNAMICS:
                for m in METRICS:
                    v = holdout if m == "model_holdout_mse" else out[dyn][m]
                    if m == "model_holdout_mse" and dyn == "sim":
                        v = float("nan")
                    table.add(f"{label}/{dyn}", n, seed, 0, m, v)
            bar.set_postfix_str(f"seed {seed} n={n}: MSE sim {float(out['sim']['grad_mse_rel']):.3g} "
                                f"model {float(out['model']['grad_mse_rel']):.3g} (relative)")
            bar.update(1)
    bar.close()
    table.write(os.path.join(run_dir, "metrics.csv"))
    cols = RD.read_metrics(os.path.join(run_dir, "metrics.csv"))
    summary = summarize(cols, cfg, label, ns, fits)
    summary["plots"] = [plot(cols, label, ns, T, run_dir)]
    summary["wall_s"] = time.perf_counter() - t_start
    RD.write_json(os.path.join(run_dir, "summary.json"), summary)
    return summary


def _mean_over_seeds(cols, run, n, metric):
    sel = (cols["run"] == run) & (cols["n"] == n) & (cols["metric"] == metric)
    v = cols["value"][sel]
    return (float(np.nanmean(v)), float(np.nanstd(v))) if np.isfinite(v).any() else (None, None)


def summarize(cols, cfg, label, ns, fits) -> Dict[str, Any]:
    per = {}
    for dyn in DYNAMICS:
        run = f"{label}/{dyn}"
        per[dyn] = {str(n): {m: _mean_over_seeds(cols, run, n, m)[0] for m in METRICS} for n in ns}
    crossover, better = {}, {}
    for dyn in ("model", "model_mean"):
        worse = [per[dyn][str(n)]["grad_mse"] > per["sim"][str(n)]["grad_mse"] for n in ns]
        better[dyn] = [n for n, w in zip(ns, worse) if not w]
        # the smallest n from which on the model's gradient is worse for every longer unroll
        tail = len(ns)
        while tail > 0 and worse[tail - 1]:
            tail -= 1
        crossover[dyn] = ns[tail] if tail < len(ns) else None
    rows = []
    for n in ns:
        rows.append([n] + [per[d][str(n)][m] for d in DYNAMICS for m in ("grad_mse_rel",)] +
                    [per["sim"][str(n)]["grad_var"], per["model"][str(n)]["grad_bias"] ** 2
                     if per["model"][str(n)]["grad_bias"] is not None else None,
                     per["model"][str(n)]["grad_cos"], per["model"][str(n)]["obs_error"]])
    tables = [{
        "title": f"Model vs simulator gradients ({label}), mean over seeds",
        "note": "MSE rel: mean ‖ĝ − g_n‖² / ‖g_n‖², g_n the simulator's gradient over all batches. "
                "model bias² against the simulator's variance shows where model error overtakes variance.",
        "columns": ["n", "MSE rel sim", "MSE rel model", "MSE rel model mean", "variance sim", "bias² model",
                    "cos(model, sim)", "obs error n steps ahead"],
        "rows": rows,
    }, {
        "title": "Where model error overtakes: the model's gradient MSE against the simulator's",
        "note": "n*: the smallest n from which on the model's gradient MSE exceeds the simulator's for every "
                "longer unroll (– if the model is not worse at the longest n).",
        "columns": ["dynamics", "n*", "n where the model's MSE <= the simulator's"],
        "rows": [[d, crossover[d], better[d]] for d in crossover],
    }, {
        "title": "Model fits",
        "columns": ["seed", "transitions", "holdout MSE (elites)"],
        "rows": [[s, f["transitions"], f["holdout_mse"]] for s, f in fits.items()],
    }]
    return {"script": SCRIPT, "status": "complete", "ns": ns, "full_episode_n": cfg["episode_length"],
            "per_n": per, "crossover_n": crossover, "model_not_worse_ns": better, "fits": {str(k): v for k, v in fits.items()}, "tables": tables}


def plot(cols, label, ns, T, run_dir) -> str:
    from experiments.plots import n_axis_labels

    plt = RD.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    x = np.arange(len(ns))
    colors = {"sim": "C0", "model": "C3", "model_mean": "C1"}

    def series(dyn, metric):
        return np.array([_mean_over_seeds(cols, f"{label}/{dyn}", n, metric)[0] or np.nan for n in ns], float)

    ax = axes[0]
    ax.plot(x, series("sim", "grad_var"), "o-", color=colors["sim"], label="variance, simulator")
    ax.plot(x, series("model", "grad_var"), "o--", color=colors["model"], label="variance, model (sampled)")
    ax.plot(x, series("model", "grad_bias") ** 2, "s-", color=colors["model"], label="bias², model (sampled)")
    ax.plot(x, series("model_mean", "grad_bias") ** 2, "s-", color=colors["model_mean"], label="bias², model mean")
    ax.set_title("variance vs model bias of ĝ_n")
    ax = axes[1]
    for dyn in DYNAMICS:
        ax.plot(x, series(dyn, "grad_mse_rel"), "o-", color=colors[dyn], label=dyn)
    ax.set_title("MSE vs the simulator's large-batch gradient (relative)")
    for ax in axes[:2]:
        ax.set_yscale("log")
    ax = axes[2]
    ax.plot(x, series("model", "grad_cos"), "o-", color=colors["model"], label="cos(model, sim) sampled")
    ax.plot(x, series("model_mean", "grad_cos"), "o-", color=colors["model_mean"], label="cos(model mean, sim)")
    ax.set_ylim(-1.05, 1.05)
    ax2 = ax.twinx()
    ax2.plot(x, series("model_mean", "obs_error"), "k:", marker="^", label="obs error n steps ahead")
    ax2.set_ylabel("‖obs_model − obs_sim‖ after n steps")
    ax.set_title("direction agreement and prediction error")
    ax2.legend(fontsize=8, loc="lower right")
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(n_axis_labels(ns, T), fontsize=8)
        ax.set_xlabel("unroll length n")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"{label}: the n-step pathwise gradient through the simulator and a learned ensemble")
    fig.tight_layout()
    name = f"model_vs_sim_{label.replace('/', '_')}.png"
    fig.savefig(os.path.join(run_dir, name), dpi=110)
    plt.close(fig)
    return name


def _n_value(text: str):
    return RD.unroll_length(text, minimum=1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = RD.CliParser(prog=f"python -m experiments.{SCRIPT}",
                     description="Compare the n-step pathwise gradient through the simulator and through a learned "
                                 "ensemble model: variance, model bias and MSE against n.")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the default: pendulum, 2 seeds, n = 1 … full")
    size.add_argument("--full", action="store_true", help="episode length 200, 5 seeds, larger models and batches")
    size.add_argument("--tiny", action="store_true", help="a seconds-long smoke configuration (tests)")
    p.add_argument("--env", default="pendulum", help=f"one of {list(ENVS)} (default pendulum)")
    p.add_argument("--estimator", default="dpmb", choices=("dpmb", "svg"),
                   help="deterministic policy (dpmb) or the Gaussian policy with sampled noise (svg)")
    p.add_argument("--ns", nargs="+", metavar="N", help="unroll lengths >= 1 and/or 'full'")
    p.add_argument("--seeds", type=int, metavar="K", help="seeds 0..K-1 (policy, data and model per seed)")
    p.add_argument("--batches", type=int, metavar="M", help="independent batches per n")
    p.add_argument("--batch-size", type=int, metavar="B", help="start states per batch")
    p.add_argument("--gamma", type=float, default=0.99, help="discount (default 0.99)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: a new runs/model_vs_sim-<time>/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    preset = "full" if args.full else "tiny" if args.tiny else "quick"
    pre = PRESETS[preset]
    if args.env not in ENVS:
        p.fail(f"--env: unknown environment {args.env!r}; expected one of {list(ENVS)}")
    try:
        ns = [_n_value(x) for x in args.ns] if args.ns else list(pre["ns"])
    except ValueError as err:
        p.fail(str(err))
    for name in ("seeds", "batches", "batch_size"):
        v = getattr(args, name)
        if v is not None and v < (2 if name == "batches" else 1):
            p.fail(f"--{name.replace('_', '-')} must be >= {2 if name == 'batches' else 1}, got {v}")
    if not 0.0 <= args.gamma <= 1.0 or math.isnan(args.gamma):
        p.fail(f"--gamma must lie in [0, 1], got {args.gamma}")
    cfg = {
        "script": SCRIPT, "preset": preset, "env": args.env, "estimator": args.estimator, "ns": ns,
        "episode_length": pre["episode_length"], "seeds": list(range(args.seeds or pre["seeds"])),
        "data_envs": pre["data_envs"], "explore_std": 0.5, "hidden": list(pre["hidden"]),
        "model_hidden": list(pre["model_hidden"]), "ensemble": pre["ensemble"], "elites": pre["elites"],
        "epochs": pre["epochs"], "batches": args.batches or pre["batches"],
        "batch_size": args.batch_size or pre["batch_size"], "gamma": args.gamma,
    }
    try:
        run_dir = RD.new_run_dir(SCRIPT, out=args.out)
    except (ValueError, OSError) as err:
        p.fail(f"--out: {err}")
    RD.write_json(os.path.join(run_dir, "config.json"), {
        "config": cfg, "argv": list(sys.argv[1:] if argv is None else argv), "environment": RD.environment_info()})
    print(f"run folder: {run_dir}", file=sys.stderr, flush=True)
    summary = run(cfg, run_dir, progress=not args.no_progress)
    print(f"done in {summary['wall_s']:.1f} s; crossover n: {summary['crossover_n']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
