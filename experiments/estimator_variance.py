"""Naive vs score-function vs reparameterised gradient estimators (docs/theory.md §2), plus an LQR policy gradient.

    python -m experiments.estimator_variance --out results/estimator_variance.json [--trials 1000]
        [--batch 1000] [--seed 0] [--plot PATH]      (PATH defaults to the JSON path with .png)
    python -m experiments.estimator_variance --out /tmp/ev.json --tiny   # smoke run: seconds on 2 CPU cores

``--tiny`` (a smoke configuration for tests) keeps every estimator of both parts, the JSON and
the plot, but draws 16 toy estimates of 64 samples and 8 LQR estimates of 16 trajectories
(``PRESETS["tiny"]``); the numbers are then far too noisy to read. Explicit ``--trials``,
``--batch``, ``--lqr-trials`` and ``--lqr-batch`` override the preset.

Part 1, the toy problem of the text: x ~ N(θ, 1), f(x, θ) = x² θ, θ = 1.
J(θ) = E f = θ(1 + θ²), so dJ/dθ = 1 + 3θ² (= 4 at θ = 1). Each estimate averages
N = batch per-sample terms g_i; ``trials`` independent estimates are drawn (vmapped).
Writing x = θ + ε, ε ~ N(0, 1), and using E ε² = 1, Var ε = 1, Var ε² = 2,
Var ε³ = 15, Cov(ε, ε³) = 3, Cov(ε, ε²) = Cov(ε², ε³) = 0:

* naive (differentiate the samples, ignore that their law depends on θ):
  g = ∂θ f(x, θ)|_x fixed = x² = θ² + 2θε + ε²;
  E g = θ² + 1 (bias −2θ²), Var g = 4θ² + 2.
* score function: g = f(x, θ) ∂θ log p(x; θ) + ∂θ f = θ x² (x − θ) + x²
  = θ² + (θ³ + 2θ) ε + (2θ² + 1) ε² + θ ε³;
  E g = 3θ² + 1 (unbiased), Var g = (θ³+2θ)² + 2(2θ²+1)² + 15θ² + 6θ(θ³+2θ)
  = θ⁶ + 18θ⁴ + 39θ² + 2.
* reparameterised: g = d/dθ[(θ + ε)² θ] = (θ + ε)² + 2θ(θ + ε) = 3θ² + 4θε + ε²;
  E g = 3θ² + 1 (unbiased), Var g = 16θ² + 2.

At θ = 1 the per-sample variances are 6, 60 and 18, so with N = 1000 the
per-estimate variances are 0.006, 0.060 and 0.018: the values quoted in
docs/theory.md §2 check out. The JSON stores these under ``"analytic"``.

Part 2, a policy gradient on a linear-Gaussian LQR system (``mbpo_grad.linear_gaussian``):
s' = A s + B a + W ξ, a = −K s + σ ε, r = −(sᵀQs + aᵀRa), horizon n, discount γ.
Estimators of ∇_K J, each averaging ``lqr_batch`` trajectories: the pathwise SVG(n)
gradient (``jax.grad`` of ``mg.pathwise_objective`` with sampled noise), REINFORCE
with reward-to-go, and REINFORCE with the exact time-indexed value baseline. The
exact gradient is ``jax.grad`` of the closed-form expected return (float64).
Results go under ``"lqr"`` in the JSON and in the plot's second panel.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

import mbpo_grad as mg
from mbpo_grad import linear_gaussian as lg
from mbpo_grad import score_function as sf

ESTIMATORS = ("naive", "score_function", "reparam")
LQR_ESTIMATORS = ("pathwise", "score_function", "score_function_baseline")

# sample sizes of the CLI; None for the LQR ones means "the toy problem's"
PRESETS = {
    "default": dict(trials=1000, batch=1000, lqr_trials=None, lqr_batch=None),
    # tiny: every estimator, JSON and plot, all compilation: 16 × 64 toy samples, 8 × 16 LQR trajectories
    "tiny": dict(trials=16, batch=64, lqr_trials=8, lqr_batch=16),
}


# ---------------------------------------------------------------------------- toy problem

def f(x, theta):
    """The integrand f(x, θ) = x² θ."""
    return x**2 * theta


def log_density(x, theta):
    """log N(x; θ, 1)."""
    return -0.5 * (x - theta) ** 2 - 0.5 * jnp.log(2.0 * jnp.pi)


def naive_estimate(theta, eps):
    """∂θ mean f(x, θ) with the samples x = θ + ε treated as constants."""
    x = jax.lax.stop_gradient(theta + eps)
    return jax.grad(lambda t: jnp.mean(f(x, t)))(theta)


def score_function_estimate(theta, eps):
    """mean[ f(x, θ) ∂θ log p(x; θ) + ∂θ f(x, θ) ] via the surrogate f + stop_grad(f) log p."""
    x = jax.lax.stop_gradient(theta + eps)

    def surrogate(t):
        return jnp.mean(f(x, t) + jax.lax.stop_gradient(f(x, t)) * log_density(x, t))

    return jax.grad(surrogate)(theta)


def reparam_estimate(theta, eps):
    """∂θ mean f(θ + ε, θ) (the sample moves with θ)."""
    return jax.grad(lambda t: jnp.mean(f(t + eps, t)))(theta)


def toy_estimates(key, theta, trials: int, batch: int) -> Dict[str, jax.Array]:
    """[trials] estimates of each estimator, each from ``batch`` samples (vmapped over trials).

    All three estimators share the same noise in a trial (common random numbers).
    """
    eps = jax.random.normal(key, (trials, batch), dtype=jnp.result_type(float))
    theta = jnp.asarray(theta, dtype=eps.dtype)
    fns = {"naive": naive_estimate, "score_function": score_function_estimate, "reparam": reparam_estimate}
    return {name: jax.jit(jax.vmap(fn, in_axes=(None, 0)))(theta, eps) for name, fn in fns.items()}


def analytic(theta: float, batch: int) -> Dict[str, Dict[str, float]]:
    """Exact mean, bias and per-estimate variance (per-sample variance / batch) of each estimator."""
    t = float(theta)
    true = 1.0 + 3.0 * t**2
    per_sample = {
        "naive": (t**2 + 1.0, 4.0 * t**2 + 2.0),
        "score_function": (true, t**6 + 18.0 * t**4 + 39.0 * t**2 + 2.0),
        "reparam": (true, 16.0 * t**2 + 2.0),
    }
    out = {}
    for name, (mean, var) in per_sample.items():
        v = var / batch
        out[name] = {"mean": mean, "bias": mean - true, "variance": v, "mse": (mean - true) ** 2 + v,
                     "per_sample_variance": var}
    return out


def summarize(estimates, truth) -> Dict[str, Any]:
    """{"mean", "bias", "variance", "mse"} over the trial axis (lists for vector-valued estimates)."""
    est = np.asarray(estimates, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    mean = est.mean(0)
    var = est.var(0, ddof=1)
    bias = mean - truth
    out = {"mean": mean, "bias": bias, "variance": var, "mse": bias**2 + var,
           "standard_error": np.sqrt(var / est.shape[0])}
    out = {k: (v.tolist() if np.ndim(v) else float(v)) for k, v in out.items()}
    if est.ndim > 1:
        out["total_variance"] = float(np.sum(var))
        out["total_mse"] = float(np.sum(bias**2 + var))
    return out


# ---------------------------------------------------------------------------- LQR

def lqr_setup(dtype=None) -> Dict[str, Any]:
    """A double integrator with process noise, a stabilising gain and a Gaussian policy."""
    dtype = dtype or jnp.result_type(float)
    system = lg.LinearGaussianSystem(
        A=jnp.array([[1.0, 0.1], [0.0, 1.0]], dtype),
        B=jnp.array([[0.0], [0.1]], dtype),
        W=0.05 * jnp.eye(2, dtype=dtype),
        Q=jnp.eye(2, dtype=dtype),
        R=0.1 * jnp.eye(1, dtype=dtype),
    )
    return dict(system=system, K=jnp.array([[0.5, 0.8]], dtype), sigma=0.3,
                m0=jnp.array([1.0, 0.0], dtype), S0=0.1 * jnp.eye(2, dtype=dtype), horizon=5, gamma=0.95)


def lqr_per_trajectory_grads(cfg, s0, eps, xi):
    """Per-trajectory gradients [B, m, d] of the three LQR estimators, for noise eps [n+1, B, m], xi [n, B, k]."""
    system, K, sigma, n, gamma = cfg["system"], cfg["K"], cfg["sigma"], cfg["horizon"], cfg["gamma"]
    policy, step, reward = lg.policy(sigma), lg.step(system), lg.reward(system)
    Ps, cs = lg.value_functions(K, system, sigma=sigma, horizon=n, gamma=gamma)
    discounts = jnp.full((n,), gamma, dtype=s0.dtype)

    def pathwise(K, s, e, x):
        return mg.pathwise_objective(policy, K, step, reward, s[None], horizon=n, gamma=gamma,
                                     policy_noise=e[:, None], dynamics_noise=x[:, None])

    def score(K, s, e, x, use_baseline):
        _, tr = mg.pathwise_returns(policy, jax.lax.stop_gradient(K), step, reward, s[None], horizon=n,
                                    gamma=gamma, policy_noise=e[:, None], dynamics_noise=x[:, None])
        states, actions = tr.states[0, :-1], tr.actions[0, :-1]
        lp = sf.trajectory_log_probs(lambda k, o, a: lg.log_prob(k, o, a, sigma), K, states, actions)
        base = jax.vmap(lg.state_value)(Ps[:-1], cs[:-1], states) if use_baseline else None
        return sf.reinforce_surrogate(lp, tr.rewards[0], discounts, base)

    per = lambda fn: jax.vmap(jax.grad(fn), in_axes=(None, 0, 1, 1))(K, s0, eps, xi)  # noqa: E731
    return {
        "pathwise": per(pathwise),
        "score_function": per(lambda *a: score(*a, False)),
        "score_function_baseline": per(lambda *a: score(*a, True)),
    }


def sample_lqr_noise(key, cfg, batch):
    system, n = cfg["system"], cfg["horizon"]
    d, m = system.B.shape
    k = system.W.shape[1]
    dtype = system.A.dtype
    k0, k1, k2 = jax.random.split(key, 3)
    s0 = cfg["m0"] + jax.random.normal(k0, (batch, d), dtype) @ jnp.linalg.cholesky(cfg["S0"]).T
    return s0, jax.random.normal(k1, (n + 1, batch, m), dtype), jax.random.normal(k2, (n, batch, k), dtype)


def lqr_estimates(key, cfg, trials: int, batch: int) -> Dict[str, jax.Array]:
    """[trials, m, d] estimates per estimator, each the mean over ``batch`` trajectories.

    Trials run under ``lax.map`` (compiled, chunks of vmapped trials) to bound memory.
    """

    def one_trial(k):
        grads = lqr_per_trajectory_grads(cfg, *sample_lqr_noise(k, cfg, batch))
        return {name: g.mean(0) for name, g in grads.items()}

    keys = jax.random.split(key, trials)
    chunk = max(1, min(trials, 20_000 // max(batch, 1)))
    return jax.jit(lambda ks: jax.lax.map(one_trial, ks, batch_size=chunk))(keys)


# ---------------------------------------------------------------------------- driver

def run(*, trials: int = 1000, batch: int = 1000, seed: int = 0, theta: float = 1.0,
        lqr_trials: int | None = None, lqr_batch: int | None = None, return_estimates: bool = False):
    """The whole experiment in float64; returns the JSON-ready dict (and the raw estimates if asked)."""
    for name, val in (("trials", trials), ("batch", batch)):
        if not isinstance(val, int) or val < 2:
            raise ValueError(f"{name} must be an int >= 2, got {val!r}")
    lqr_trials = trials if lqr_trials is None else lqr_trials
    lqr_batch = batch if lqr_batch is None else lqr_batch
    with jax.enable_x64(True):
        k_toy, k_lqr = jax.random.split(jax.random.PRNGKey(seed))
        true = 1.0 + 3.0 * theta**2
        toy = toy_estimates(k_toy, theta, trials, batch)
        results: Dict[str, Any] = {name: summarize(toy[name], true) for name in ESTIMATORS}
        results["true_gradient"] = true
        results["analytic"] = analytic(theta, batch)
        results["config"] = {"theta": theta, "trials": trials, "batch": batch, "seed": seed}

        cfg = lqr_setup(jnp.float64)
        kw = dict(sigma=cfg["sigma"], m0=cfg["m0"], S0=cfg["S0"], horizon=cfg["horizon"], gamma=cfg["gamma"])
        exact = np.asarray(lg.exact_gradient(cfg["K"], cfg["system"], **kw))
        lqr = lqr_estimates(k_lqr, cfg, lqr_trials, lqr_batch)
        results["lqr"] = {name: summarize(lqr[name], exact) for name in LQR_ESTIMATORS}
        results["lqr"]["exact"] = exact.tolist()
        results["lqr"]["expected_return"] = float(lg.expected_return(cfg["K"], cfg["system"], **kw))
        results["lqr"]["config"] = {
            "A": np.asarray(cfg["system"].A).tolist(), "B": np.asarray(cfg["system"].B).tolist(),
            "W": np.asarray(cfg["system"].W).tolist(), "Q": np.asarray(cfg["system"].Q).tolist(),
            "R": np.asarray(cfg["system"].R).tolist(), "K": np.asarray(cfg["K"]).tolist(),
            "sigma": cfg["sigma"], "m0": np.asarray(cfg["m0"]).tolist(), "S0": np.asarray(cfg["S0"]).tolist(),
            "horizon": cfg["horizon"], "gamma": cfg["gamma"], "trials": lqr_trials, "batch": lqr_batch,
        }
        toy_np = {k: np.asarray(v) for k, v in toy.items()}
        lqr_np = {k: np.asarray(v) for k, v in lqr.items()}
    if return_estimates:
        return results, {"toy": toy_np, "lqr": lqr_np}
    return results


def plot(results, estimates, path: str) -> None:
    """Violin + box plots: the toy estimators (left) and the LQR estimators of ∂J/∂K₀₀ (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    ax = axes[0]
    data = [estimates["toy"][k] for k in ESTIMATORS]
    ax.violinplot(data, showextrema=False)
    ax.boxplot(data, notch=True, showfliers=False)
    ax.axhline(results["true_gradient"], color="r", ls="--", label="true gradient")
    ax.set_xticks([1, 2, 3], ["naive", "score function", "reparam"])
    cfg = results["config"]
    ax.set_title(f"x~N(θ,1), f=x²θ, θ={cfg['theta']}: {cfg['trials']} trials × batch {cfg['batch']}")
    ax.set_ylabel("gradient estimate")
    ax.legend()
    ax.grid(alpha=0.3)

    ax = axes[1]
    data = [estimates["lqr"][k][:, 0, 0] for k in LQR_ESTIMATORS]
    ax.violinplot(data, showextrema=False)
    ax.boxplot(data, notch=True, showfliers=False)
    ax.axhline(results["lqr"]["exact"][0][0], color="r", ls="--", label="exact (closed form)")
    ax.set_xticks([1, 2, 3], ["pathwise SVG(n)", "score function", "SF + exact baseline"])
    lc = results["lqr"]["config"]
    ax.set_title(f"LQR ∂J/∂K₀₀ (n={lc['horizon']}, γ={lc['gamma']}): {lc['trials']} trials × batch {lc['batch']}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _print_summary(results) -> None:
    print(f"toy: true gradient {results['true_gradient']:.4f}")
    for name in ESTIMATORS:
        r, a = results[name], results["analytic"][name]
        print(f"  {name:16s} mean {r['mean']:.4f}  bias {r['bias']:+.4f}  var {r['variance']:.5f} "
              f"(analytic {a['variance']:.5f})  mse {r['mse']:.5f}")
    lqr = results["lqr"]
    print(f"lqr: exact gradient {np.round(lqr['exact'], 5).tolist()}")
    for name in LQR_ESTIMATORS:
        r = lqr[name]
        print(f"  {name:24s} mean {np.round(r['mean'], 5).tolist()}  total var {r['total_variance']:.3e}  "
              f"total mse {r['total_mse']:.3e}")


def main(argv=None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m experiments.estimator_variance", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON results file")
    p.add_argument("--tiny", action="store_true", help="a smoke configuration (tests): every estimator, the JSON "
                   "and the plot from 16 × 64 toy and 8 × 16 LQR samples; seconds on 2 CPU cores, nearly all "
                   "compilation (explicit sizes below override it)")
    p.add_argument("--trials", type=int, default=None, help="independent estimates per estimator (default 1000)")
    p.add_argument("--batch", type=int, default=None, help="samples averaged in one estimate (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--theta", type=float, default=1.0)
    p.add_argument("--lqr-trials", type=int, default=None, help="LQR trials (default: --trials)")
    p.add_argument("--lqr-batch", type=int, default=None, help="trajectories per LQR estimate (default: --batch)")
    p.add_argument("--plot", default=None, help="PNG path (default: the JSON path with .png)")
    args = p.parse_args(argv)
    pre = PRESETS["tiny" if args.tiny else "default"]
    size = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in pre.items()}
    results, estimates = run(seed=args.seed, theta=args.theta, return_estimates=True, **size)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    plot_path = args.plot or os.path.splitext(args.out)[0] + ".png"
    results["plot"] = plot_path
    results["preset"] = "tiny" if args.tiny else "default"
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)
    plot(results, estimates, plot_path)
    _print_summary(results)
    print(f"wrote {args.out} and {plot_path}")
    return results


if __name__ == "__main__":
    main()
