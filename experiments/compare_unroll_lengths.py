"""Compare unroll lengths n of the pathwise policy gradient: DPMB-R-n and SVG(n), n = 0 … full episode.

    python -m experiments.compare_unroll_lengths              # --quick (default): pendulum + LQR probe, < 10 min on 2 CPUs
    python -m experiments.compare_unroll_lengths --full       # LQR, pendulum, cart-pole, Brax (inverted pendulum,
                                                              # half-cheetah, ant), 16 seeds: a GPU job
    python -m experiments.compare_unroll_lengths --envs pendulum --ns 1 8 full --seeds 8 --actor-lr 1e-3 3e-3
    python -m experiments.compare_unroll_lengths --resume runs/compare_unroll_lengths-20250101-120000

For every environment, estimator and unroll length n (docs/theory.md §1):

| n                | deterministic policy ("dpmb")            | Gaussian policy ("svg")                 |
|------------------|------------------------------------------|-----------------------------------------|
| 0                | DDPG actor: Q(s, π(s)), replay critic    | SVG(0): Q(s, π(s, ε)), replay (SAC, α=0) |
| 1 … T−1          | DPMB-R-n: SHAC window n + V critic       | SVG(n): SHAC window n + V critic         |
| T (full episode) | BPO: whole episode, no critic            | SVG(∞): whole episode, no critic         |

n = 0 runs the replay agents (``agents.ddpg`` / ``agents.sac`` with the temperature fixed
at 0) because J_0 needs an action-value critic Q(s, a) trained on exploratory actions; the
window agent (``agents.shac``) has a state-value critic, for which J_0 = V(s_0) carries
no policy gradient. Seeds × float hyper-parameters (``--actor-lr``, ``--lam``, ...) of one
n run as ONE compiled, vmapped program (``mg.sweep``); different n are separate programs.

After every block each training arm logs ``grad_norm`` and ``grad_var``: the norm of the batch-mean
actor gradient and the variance of that mean, from per-sample gradients at the arm's current
state: the per-sample gradients (``common.per_sample_grads``) of the agent's own
``Agent.actor_objective`` on its own ``Agent.actor_batch``, the very objective and batch the actor
step trains on — the window and BPO arms per env (time-limit bootstrap inside the window
included), the n = 0 arms per replayed observation, the ``--dynamics model`` arms per branched
model rollout (entropy term and V' tail included).

``--dynamics model`` adds arms that differentiate through a learned ensemble instead of the
simulator (``agents.model_based``). The script also measures, on LQR, the gradient's bias and
variance against the exact gradient for every n (``lqr_gradient_probe``; the curse-of-horizon
picture).

Output (``--out DIR``, default ``runs/compare_unroll_lengths-<timestamp>/``): config.json,
metrics.csv (long: run, n, seed, step, metric, value), summary.json, PNG plots, ckpt/.
See docs/experiments.md.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from experiments import rundir as RD

SCRIPT = "compare_unroll_lengths"
ESTIMATORS = ("dpmb", "svg")
ESTIMATOR_LABELS = {"dpmb": "deterministic n-step (DDPG / DPMB-R-n / BPO)", "svg": "SVG(n) (SVG(0) / SVG(n) / SVG(∞))"}
DEFAULT_NS = (0, 1, 2, 4, 8, 16, 32, 64, "full")
TRAIN_METRICS = ("eval_return", "train_return", "env_steps", "wall_s", "grad_norm", "grad_var", "actor_loss",
                 "masked_frac")
PROBE_METRICS = ("grad_bias", "grad_var", "grad_mse", "grad_bias_rel", "grad_var_rel", "exact_grad_norm",
                 "mc_mean_error_z")
HPARAM_NAMES = ("actor_lr", "critic_lr", "lam", "gamma")

ENV_ALIASES = {
    "lqr": "lqr", "pendulum": "pendulum", "cartpole": "cartpole", "cart-pole": "cartpole",
    "inverted_pendulum": "brax:inverted_pendulum", "halfcheetah": "brax:halfcheetah", "ant": "brax:ant",
}


# --------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class EnvSettings:
    """Static per-environment settings of one preset (JSON-serialisable)."""

    episode_length: int
    num_envs: int            # parallel envs of the window / BPO agents
    env_steps: int           # budget per run (iterations are derived per n, see ``plan_iterations``)
    blocks: int              # evaluations (= logged points) per run
    max_iterations: int
    hidden: Tuple[int, ...]
    actor_lr: float = 2e-3
    critic_lr: float = 2e-3
    gamma: float = 0.99
    lam: float = 0.95
    eval_envs: int = 16
    critic_iterations: int = 4
    critic_minibatches: int = 4
    replay_envs: int = 8      # n = 0 (DDPG / SAC)
    replay_updates: int = 2
    replay_batch: int = 128
    warmup_steps: int = 500
    # --dynamics model (agents.model_based): real steps per run = model_iterations × replay_envs × model_steps
    model_iterations: int = 40
    model_steps: int = 25
    model_updates: int = 10
    model_batch: int = 128
    model_hidden: Tuple[int, ...] = (128, 128)
    model_epochs: int = 5
    model_fit_size: int = 1024


def _settings(preset: str) -> Dict[str, EnvSettings]:
    if preset == "tiny":
        base = dict(num_envs=8, env_steps=1024, blocks=2, max_iterations=8, hidden=(8,), eval_envs=4,
                    critic_iterations=1, critic_minibatches=1, replay_envs=4, replay_updates=1,
                    replay_batch=16, warmup_steps=16, model_iterations=4, model_steps=8,
                    model_updates=2, model_batch=16, model_hidden=(16,), model_epochs=1, model_fit_size=64)
        return {"lqr": EnvSettings(episode_length=16, **base), "pendulum": EnvSettings(episode_length=16, **base),
                "cartpole": EnvSettings(episode_length=16, **base)}
    if preset == "quick":
        base = dict(num_envs=32, blocks=8, hidden=(32, 32), eval_envs=16, critic_iterations=2,
                    critic_minibatches=4, replay_envs=8, replay_updates=2, replay_batch=128, warmup_steps=400)
        return {
            "lqr": EnvSettings(episode_length=100, env_steps=48_000, max_iterations=200, **base),
            "pendulum": EnvSettings(episode_length=100, env_steps=48_000, max_iterations=240, **base),
            "cartpole": EnvSettings(episode_length=100, env_steps=48_000, max_iterations=240, **base),
            "brax:inverted_pendulum": EnvSettings(episode_length=100, env_steps=64_000, max_iterations=200, **base),
        }
    if preset == "full":
        base = dict(num_envs=64, blocks=20, hidden=(64, 64), eval_envs=32, critic_iterations=8,
                    critic_minibatches=4, replay_envs=16, replay_updates=4, replay_batch=256, warmup_steps=5000)
        big = dict(base, num_envs=64, hidden=(128, 128))
        return {
            "lqr": EnvSettings(episode_length=100, env_steps=2_000_000, max_iterations=4000, **base),
            "pendulum": EnvSettings(episode_length=200, env_steps=4_000_000, max_iterations=4000, **base),
            "cartpole": EnvSettings(episode_length=200, env_steps=4_000_000, max_iterations=4000, **base),
            "brax:inverted_pendulum": EnvSettings(episode_length=1000, env_steps=4_000_000, max_iterations=2000,
                                                  **base),
            "brax:halfcheetah": EnvSettings(episode_length=1000, env_steps=20_000_000, max_iterations=4000,
                                            actor_lr=1e-3, **big),
            "brax:ant": EnvSettings(episode_length=1000, env_steps=20_000_000, max_iterations=4000,
                                    actor_lr=1e-3, **big),
        }
    raise ValueError(f"preset: unknown preset {preset!r}")


PRESETS = {
    # envs, seeds, LQR probe (batches, batch size)
    # tiny: one env, one n per arm kind (replay / window / BPO), both estimators: 6 compiled programs
    "tiny": dict(envs=("lqr",), ns=(0, 4, "full"), seeds=2, probe_batches=16, probe_batch=8),
    "quick": dict(envs=("pendulum",), ns=DEFAULT_NS, seeds=4, probe_batches=256,
                  probe_batch=16),
    "full": dict(envs=("lqr", "pendulum", "cartpole", "brax:inverted_pendulum", "brax:halfcheetah", "brax:ant"),
                 ns=DEFAULT_NS, seeds=16, probe_batches=1024, probe_batch=64),
}


def plan_iterations(kind: str, n: int, s: EnvSettings) -> Tuple[int, int]:
    """(iterations, eval_every) for an arm: the env-step budget divided by the env steps per
    iteration, clipped to [blocks, max_iterations], rounded to a multiple of ``blocks``
    (model-based arms: ``model_iterations`` rounded the same way)."""
    if kind == "model":
        eval_every = max(1, s.model_iterations // s.blocks)
        return eval_every * s.blocks, eval_every
    if kind == "replay":
        per_it = s.replay_envs
    elif kind == "bpo":
        per_it = s.episode_length * s.num_envs
    else:
        per_it = n * s.num_envs
    it = max(s.blocks, min(s.max_iterations, s.env_steps // per_it))
    eval_every = max(1, it // s.blocks)
    return eval_every * s.blocks, eval_every


# --------------------------------------------------------------------------- environments
LQR_DEFAULT = dict(rho=0.99, theta=0.3, noise=0.1, r_weight=0.1)


def lqr_matrices(rho: float = 0.99, theta: float = 0.3, r_weight: float = 0.1):
    """A lightly damped oscillator: A = ρ·rotation(θ), B = [0, 1]ᵀ, Q = I, R = r_weight·I.

    With ρ close to 1 the effects of noise and of the gain persist for many steps: long
    unrolls accumulate them (the curse-of-horizon regime), short ones lean on the critic.
    """
    c, s = math.cos(theta), math.sin(theta)
    A = rho * np.array([[c, -s], [s, c]])
    B = np.array([[0.0], [1.0]])
    return A, B, np.eye(2), r_weight * np.eye(1)


def make_env(name: str, episode_length: int, lqr: Optional[Dict[str, float]] = None):
    from mbpo_grad import envs

    if name == "lqr":
        p = dict(LQR_DEFAULT, **(lqr or {}))
        A, B, Q, R = lqr_matrices(p["rho"], p["theta"], p["r_weight"])
        return envs.make("lqr", A=A, B=B, Q=Q, R=R, episode_length=episode_length, noise_scale=p["noise"])
    if name == "brax:inverted_pendulum":
        # Brax pays a constant +1 while alive: its pathwise gradient is zero. The registered
        # smooth variant instead (reward cos(pole angle') - 0.01 |a|^2).
        return envs.make("brax:inverted_pendulum_smooth", episode_length=episode_length)
    return envs.make(name, episode_length=episode_length)


# --------------------------------------------------------------------------- arms
class Arm(NamedTuple):
    env: str
    estimator: str
    n: int
    kind: str                 # "replay" (n = 0), "window" (0 < n < T), "bpo" (n = T)
    agent: Any                # mbpo_grad.agents.common.Agent
    hparams: Any              # the agent's HParams NamedTuple (defaults)
    iterations: int
    eval_every: int
    grad_probe: Callable      # (state, hp, key) -> (grad_norm, grad_var)
    label: str
    num_envs: int = 0         # window / BPO agents: envs per update (for the masked fraction)


def _per_sample_stats(grads):
    """grads: pytree with a leading sample axis. Returns (‖mean‖, tr Cov / N): the norm of the
    batch-mean gradient and the variance of that batch mean across batches."""
    import jax
    import jax.flatten_util  # noqa: F401  (ravel_pytree)
    import jax.numpy as jnp

    flat = jax.vmap(lambda g: jax.flatten_util.ravel_pytree(g)[0])(grads)  # [N, P]
    flat = flat.astype(jnp.float32)
    n = flat.shape[0]
    mean = jnp.mean(flat, axis=0)
    var = jnp.sum(jnp.var(flat, axis=0, ddof=1 if n > 1 else 0)) / n
    return jnp.linalg.norm(mean), var


def build_arm(env_name: str, estimator: str, n: int, s: EnvSettings, lqr: Optional[Dict[str, float]] = None,
              dynamics: str = "sim") -> Arm:
    """The agent for one (env, estimator, n, dynamics) and its per-sample gradient probe.

    dynamics "model": n >= 1 runs ``agents.model_based`` (SVG(n) / DPMB-R-n through a learned
    ensemble, branching from replayed real states, V critic on the tail, also for n = T);
    n = 0 does not touch the dynamics and runs the same replay agent as "sim".
    """
    from mbpo_grad.agents import common, ddpg, sac, shac
    from mbpo_grad.policies import deterministic, gaussian

    env = make_env(env_name, s.episode_length, lqr)
    T = s.episode_length
    if n == 0:
        kind = "replay"
    elif dynamics == "model":
        kind, n = "model", min(n, T)
    elif n >= T:
        kind, n = "bpo", T
    else:
        kind = "window"
    iterations, eval_every = plan_iterations(kind, n, s)
    hidden = tuple(s.hidden)
    policy = (deterministic(env.obs_size, env.action_size, hidden) if estimator == "dpmb"
              else gaussian(env.obs_size, env.action_size, hidden))

    if kind == "replay":
        common_kw = dict(env=env_name, num_envs=s.replay_envs, episode_length=T, iterations=iterations,
                         updates_per_iteration=s.replay_updates, batch_size=s.replay_batch,
                         buffer_size=max(1024, min(iterations * s.replay_envs, 1_000_000)), warmup_steps=s.warmup_steps,
                         actor_hidden=hidden, critic_hidden=hidden, eval_every=eval_every, eval_envs=s.eval_envs,
                         actor_lr=min(s.actor_lr, 1e-3), critic_lr=min(s.critic_lr, 1e-3), gamma=s.gamma)
        if estimator == "dpmb":
            cfg = ddpg.DDPGConfig(**common_kw)
            agent = ddpg.make_agent(cfg, env=env, policy=policy)
        else:
            cfg = sac.SACConfig(learn_alpha=False, init_alpha=0.0, **common_kw)  # α = 0: plain SVG(0)
            agent = sac.make_agent(cfg, env=env, policy=policy)
        hparams = cfg.hparams()

        def grad_probe(state, hp, key):
            """Per-sample gradients of the agent's own n = 0 actor objective (``Agent.actor_objective``:
            Q(s, π(s)) for DDPG, min_j Q_j(s, π(s, ε)) for SVG(0)) on the batch its actor step draws
            from the replay buffer (``Agent.actor_batch``: ``batch_size`` replayed observations)."""
            _, grads = common.per_sample_grads(agent.actor_objective, state.learner.actor,
                                               agent.actor_batch(state, hp, key))
            return _per_sample_stats(grads)

        label = "DDPG actor, n=0" if estimator == "dpmb" else "SVG(0), n=0"
    elif kind == "model":
        arm = _model_arm(env, env_name, estimator, n, s, policy, iterations, eval_every)
        return arm
    else:
        use_critic = kind == "window"
        cfg = shac.SHACConfig(env=env_name, num_envs=s.num_envs, horizon=n, episode_length=T, iterations=iterations,
                              actor_hidden=hidden, critic_hidden=hidden, critic_iterations=s.critic_iterations,
                              critic_minibatches=min(s.critic_minibatches, n * s.num_envs), use_critic=use_critic,
                              eval_every=eval_every, eval_envs=s.eval_envs, actor_lr=s.actor_lr,
                              critic_lr=s.critic_lr, gamma=s.gamma, lam=s.lam,
                              remat=env_name.startswith("brax:") and kind == "bpo")
        agent = shac.make_agent(cfg, env=env, policy=policy)
        hparams = cfg.hparams()

        def grad_probe(state, hp, key):
            """Per-env gradients of the agent's own window objective J_n (``Agent.actor_objective``,
            the function ``update`` differentiates: target-critic tail, time-limit bootstrap inside
            the window, normalised observations) on ``Agent.actor_batch(state, hp, key)``."""
            _, grads = shac.per_env_grads(agent.actor_objective, state.policy_params,
                                          agent.actor_batch(state, hp, key))
            return _per_sample_stats(grads)

        if kind == "bpo":
            label = "BPO, n=T" if estimator == "dpmb" else "SVG(∞), n=T"
        else:
            label = f"DPMB-R-{n}" if estimator == "dpmb" else f"SVG({n})"
    return Arm(env_name, estimator, n, kind, agent, hparams, iterations, eval_every, grad_probe, label,
               s.num_envs if kind in ("window", "bpo") else 0)


def _model_arm(env, env_name, estimator, n, s: EnvSettings, policy, iterations, eval_every) -> Arm:
    """The model-based arm (``agents.model_based``) and its gradient probe through the model."""
    from mbpo_grad.agents import common
    from mbpo_grad.agents import model_based as MB
    from mbpo_grad.models import gaussian_ensemble

    hidden = tuple(s.hidden)
    buffer_size = max(s.model_fit_size, s.model_iterations * s.replay_envs * s.model_steps)
    cfg = MB.ModelBasedConfig(
        env=env_name, num_envs=s.replay_envs, episode_length=s.episode_length, iterations=iterations,
        steps_per_iteration=s.model_steps, updates_per_iteration=s.model_updates, batch_size=s.model_batch,
        buffer_size=buffer_size, warmup_steps=min(s.warmup_steps, buffer_size // 2), eval_every=eval_every,
        eval_envs=s.eval_envs, horizon=n, actor_hidden=hidden, critic_hidden=hidden,
        model_hidden=tuple(s.model_hidden), model_epochs=s.model_epochs,
        fit_size=min(s.model_fit_size, buffer_size), gamma=s.gamma, lam=s.lam,
        actor_lr=min(s.actor_lr, 1e-3), critic_lr=min(s.critic_lr, 1e-3))
    model = gaussian_ensemble(env.obs_size, env.action_size, cfg.ensemble_size, cfg.elites, hidden=cfg.model_hidden,
                              learning_rate=cfg.model_lr, batch_size=cfg.model_batch, epochs=cfg.model_epochs)
    agent = MB.make_agent(cfg, env=env, policy=policy, model=model)

    def grad_probe(state, hp, key):
        """Per-rollout gradients of the agent's own J_n through the model (``Agent.actor_objective``:
        branched from replayed observations, V' tail, entropy term when on) on the batch its actor
        step draws (``Agent.actor_batch``: ``batch_size`` start observations)."""
        _, grads = common.per_sample_grads(agent.actor_objective, state.learner.policy,
                                           agent.actor_batch(state, hp, key))
        return _per_sample_stats(grads)

    label = (f"DPMB-R-{n} (model)" if estimator == "dpmb" else f"SVG({n}) (model)")
    return Arm(env_name, estimator, n, "model", agent, cfg.hparams(), iterations, eval_every, grad_probe, label)


# --------------------------------------------------------------------------- the vmapped block program
def make_block_fn(arm: Arm, hp_names: Sequence[str], state_treedef, trace_counter: Optional[List[int]] = None):
    """``block_fn(_key, p) -> {"state", "metrics"}`` for ``mg.sweep`` (grid=False).

    ``p`` holds one run's values: ``key`` (raw uint32[2] PRNGKey of the seed), ``block`` (int:
    which block of ``eval_every`` iterations to run), the float hyper-parameters ``hp/<name>``
    and the train state's leaves ``state/<i>``. Block 0 starts from ``agent.init``; the block is
    the agent's ``common.TrainProgram.block_at`` (the keys of ``make_train_fn``), so running blocks 0..k−1 reproduces
    ``make_train_fn(agent, iterations, eval_every)(key, hp)``. One compiled program per arm
    serves every block, every seed and every hyper-parameter value.
    """
    import jax
    import jax.numpy as jnp

    from mbpo_grad.agents import common

    agent = arm.agent
    program = common.TrainProgram.of(agent, arm.iterations, arm.eval_every)

    def block_fn(_key, p):
        if trace_counter is not None:
            trace_counter.append(1)  # Python side effect: runs once per trace, not per call
        key = p["key"]
        # names the agent does not have (e.g. λ for DDPG) are ignored by that arm
        hp = arm.hparams._replace(**{name: p[f"hp/{name}"] for name in hp_names if name in arm.hparams._fields})
        n_leaves = state_treedef.num_leaves
        given = jax.tree_util.tree_unflatten(state_treedef, [p[f"state/{i}"] for i in range(n_leaves)])
        fresh = program.init(key, hp)
        b = p["block"]
        state = jax.tree_util.tree_map(lambda f, g: jnp.where(b == 0, f, g).astype(f.dtype), fresh, given)
        state, m, e = program.block_at(state, hp, key, b)
        g_norm, g_var = arm.grad_probe(state, hp, jax.random.fold_in(program.keys(key)[2][b], 1))
        nanf = jnp.full((), jnp.nan, jnp.float32)
        metrics = {
            "eval_return": jnp.asarray(e, jnp.float32),
            "train_return": jnp.asarray(m["episode_return"][-1], jnp.float32) if "episode_return" in m else nanf,
            "env_steps": jnp.asarray(m["env_steps"][-1], jnp.float32),
            "grad_norm": g_norm,
            "grad_var": g_var,
            "actor_loss": jnp.mean(m["actor_loss"]).astype(jnp.float32) if "actor_loss" in m else nanf,
            # the window agent's guard drops envs whose gradient is non-finite or explodes
            "masked_frac": (jnp.mean(m["masked_envs"].astype(jnp.float32)) / arm.num_envs
                            if "masked_envs" in m and arm.num_envs else nanf),
        }
        return {"state": state, "metrics": metrics}

    return block_fn


# --------------------------------------------------------------------------- LQR gradient probe
class LQRProbeSetup(NamedTuple):
    """The LQR probe's system, fixed gain K, exact value matrices and exact gradient (float64)."""

    system: Any               # linear_gaussian.LinearGaussianSystem (W = noise · I)
    K: Any                    # [m, d] policy gain (a = −Ks + σε)
    sigma: float              # policy noise (0 for "dpmb")
    gamma: float
    episode_length: int
    P: Any                    # [T+1, d, d]: V_t(s) = −(sᵀ P_t s + c_t) for the remaining T − t steps
    g_star: Any               # ∇_K J_T(K), exact


def lqr_probe_setup(estimator: str, *, episode_length: int, gamma: float = 0.99, sigma: float = 0.3,
                    lqr: Optional[Dict[str, float]] = None, gain: Optional[np.ndarray] = None) -> LQRProbeSetup:
    """Build the probe's pieces. Call inside ``jax.enable_x64(True)`` (float64 references)."""
    import jax
    import jax.numpy as jnp

    from mbpo_grad import linear_gaussian as lg

    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    p = dict(LQR_DEFAULT, **(lqr or {}))
    T = int(episode_length)
    A, B, Q, R = (jnp.asarray(x, jnp.float64) for x in lqr_matrices(p["rho"], p["theta"], p["r_weight"]))
    d, m = B.shape
    system = lg.LinearGaussianSystem(A, B, p["noise"] * jnp.eye(d), Q, R)
    K = jnp.zeros((m, d)) if gain is None else jnp.asarray(gain, jnp.float64)
    sig = float(sigma) if estimator == "svg" else 0.0
    Ps, _ = lg.value_functions(K, system, sigma=sig, horizon=T, gamma=gamma)
    g_star = jax.grad(lambda k: lg.expected_return(k, system, sigma=sig, m0=jnp.zeros(d), S0=jnp.eye(d),
                                                   horizon=T, gamma=gamma))(K)
    return LQRProbeSetup(system, K, sig, float(gamma), T, Ps, g_star)


def lqr_batch_gradient(setup: LQRProbeSetup, n: int, key, delta, batch_size: int):
    """One estimate ĝ_n from ``batch_size`` start states s_0 ~ N(0, I); returns (ĝ_n, s_0).

    ĝ_n = ∇_K mean_b [Σ_{t<n} γ^t r_t + γ^n Q̂(s_n, a_n)], Q̂(s, a) = r(s, a) − γ (1 + δ)(As + Ba)ᵀ P_{n+1} (As + Ba)
    (the critic held fixed); n = T: the whole episode, no critic.
    """
    import jax
    import jax.numpy as jnp

    import mbpo_grad as mg
    from mbpo_grad import linear_gaussian as lg

    A, B = setup.system.A, setup.system.B
    d, m = B.shape
    T, gamma = setup.episode_length, setup.gamma
    n = min(int(n), T)
    policy, step, reward = lg.policy(setup.sigma), lg.step(setup.system), lg.reward(setup.system)
    k0, ke, kx = jax.random.split(key, 3)
    s0 = jax.random.normal(k0, (batch_size, d), jnp.float64)
    eps = jax.random.normal(ke, (n + 1, batch_size, m), jnp.float64) if setup.sigma > 0 else None
    xi = jax.random.normal(kx, (n, batch_size, d), jnp.float64) if n > 0 else None
    bootstrap = None
    if n < T:
        P = (1.0 + delta) * setup.P[n + 1]

        def bootstrap(s, a):
            x = A @ s + B @ a
            return reward(s, a) - gamma * (x @ P @ x)

    def J(k):
        return mg.pathwise_objective(policy, k, step, reward, s0, horizon=n, gamma=gamma, bootstrap=bootstrap,
                                     policy_noise=eps, dynamics_noise=xi)

    return jax.grad(J)(setup.K), s0


def lqr_mean_gradient(setup: LQRProbeSetup, n: int, delta):
    """E ĝ_n exactly: ∇_K of J_{n+1}(K) with the terminal cost (1 + δ) P_{n+1} held fixed (g* for n = T)."""
    import jax
    import jax.numpy as jnp

    from mbpo_grad import linear_gaussian as lg

    T = setup.episode_length
    n = min(int(n), T)
    if n >= T:
        return setup.g_star
    d = setup.system.A.shape[0]
    P = jax.lax.stop_gradient((1.0 + delta) * setup.P[n + 1])
    return jax.grad(lambda k: lg.expected_return(k, setup.system, sigma=setup.sigma, m0=jnp.zeros(d), S0=jnp.eye(d),
                                                 horizon=n + 1, gamma=setup.gamma, terminal=P))(setup.K)


def lqr_gradient_probe(estimator: str, ns: Sequence[int], *, episode_length: int, batches: int, batch_size: int,
                       critic_errors: Sequence[float] = (0.0, 0.2), gamma: float = 0.99, sigma: float = 0.3,
                       seed: int = 0, lqr: Optional[Dict[str, float]] = None, gain: Optional[np.ndarray] = None,
                       trace_counter: Optional[List[int]] = None) -> Dict[int, Dict[str, np.ndarray]]:
    """Bias and variance of the n-step pathwise gradient on LQR against the exact gradient (float64).

    System ``lqr_matrices`` with dynamics noise s' = As + Ba + w·ξ; linear policy
    a = −Ks (+ σε for "svg"), K fixed (default 0); start states s_0 ~ N(0, I);
    objective J_T(K) = E Σ_{t<T} γ^t r_t, exact gradient g* = ∇_K J_T by
    ``linear_gaussian.expected_return``. For n < T the estimator from a batch of
    ``batch_size`` start states is (``lqr_batch_gradient``)

        ĝ_n = ∇_K mean_b [ Σ_{t<n} γ^t r_t + γ^n Q̂(s_n, a_n) ],
        Q̂(s, a) = r(s, a) − γ (1 + δ) (As + Ba)ᵀ P_{n+1} (As + Ba),

    a fixed critic (no gradient through it): the exact Q-function of the current policy
    for the remaining T − n steps (P_t from ``linear_gaussian.value_functions``), scaled by
    1 + δ for a critic with relative error δ (``critic_errors``). n = T is the whole
    episode without a critic (BPO / SVG(∞)). Its mean is exact (``lqr_mean_gradient``):
    E ĝ_n = ∇_K [J_{n+1}(K) with terminal cost (1 + δ) P_{n+1} held fixed], so

        bias_n = ‖E ĝ_n − g*‖,   var_n = E ‖ĝ_n − E ĝ_n‖²  (from ``batches`` independent batches).

    Even the exact critic leaves a bias: it ignores the critic's own dependence on K,
    a term discounted by γ^{n+1} and damped by the closed loop; long unrolls remove it
    but accumulate the noise (variance). ``mc_mean_error_z`` = ‖mean ĝ − E ĝ‖ / √(var / M)
    checks the Monte-Carlo mean against the exact one (≈ 1). Returns
    {n: {metric: array [len(critic_errors)]}}; one compiled program per n (vmapped over
    the batches and the critic errors).
    """
    import jax
    import jax.numpy as jnp

    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    out: Dict[int, Dict[str, np.ndarray]] = {}
    with jax.enable_x64(True):
        deltas = jnp.asarray(critic_errors, jnp.float64)
        keys = jax.random.split(jax.random.PRNGKey(seed), batches)
        for n in sorted({min(int(n), int(episode_length)) for n in ns}):
            cache_key = (estimator, n, int(episode_length), int(batch_size), float(gamma), float(sigma),
                         tuple(sorted((lqr or {}).items())), None if gain is None else np.asarray(gain).tobytes())
            if cache_key not in _PROBE_CACHE:
                setup = lqr_probe_setup(estimator, episode_length=episode_length, gamma=gamma, sigma=sigma,
                                        lqr=lqr, gain=gain)

                def stats(keys, deltas, n=n, setup=setup):
                    if trace_counter is not None:
                        trace_counter.append(1)
                    G = jax.vmap(lambda dl: jax.vmap(
                        lambda k: lqr_batch_gradient(setup, n, k, dl, batch_size)[0])(keys))(deltas)  # [D, M, m, d]
                    gbar = jax.vmap(lambda dl: lqr_mean_gradient(setup, n, dl))(deltas)              # [D, m, d]
                    var = jnp.mean(jnp.sum((G - gbar[:, None]) ** 2, axis=(2, 3)), axis=1)
                    bias = jnp.sqrt(jnp.sum((gbar - setup.g_star) ** 2, axis=(1, 2)))
                    mc_err = jnp.sqrt(jnp.sum((jnp.mean(G, axis=1) - gbar) ** 2, axis=(1, 2)))
                    z = mc_err / jnp.sqrt(jnp.maximum(var, 1e-300) / G.shape[1])
                    return bias, var, z, jnp.sqrt(jnp.sum(setup.g_star ** 2))

                _PROBE_CACHE[cache_key] = jax.jit(stats)
            bias, var, z, gn = (np.asarray(x) for x in _PROBE_CACHE[cache_key](keys, deltas))
            gn = float(gn)
            out[n] = {"grad_bias": bias, "grad_var": var, "grad_mse": bias ** 2 + var,
                      "grad_bias_rel": bias / gn, "grad_var_rel": var / gn ** 2,
                      "exact_grad_norm": np.full_like(bias, gn), "mc_mean_error_z": z}
    return out


_PROBE_CACHE: Dict[Any, Callable] = {}


# --------------------------------------------------------------------------- experiment plan
class Unit(NamedTuple):
    """One piece of work with its own checkpoint folder and metrics part file."""

    uid: str
    kind: str                 # "train" or "probe"
    env: str
    estimator: str
    n: int
    batch: int                # seed-batch index (train)
    n_batches: int
    runs: Tuple[Tuple[int, int], ...]   # (grid index, seed) of each lane (train)
    dynamics: str = "sim"     # "sim" or "model"


def resolve_ns(ns: Sequence[Any], T: int) -> List[int]:
    """Unroll lengths for an env with episode length T: "full" → T, n > T dropped, sorted, unique."""
    out = set()
    for n in ns:
        if n == "full":
            out.add(T)
        elif int(n) <= T:
            out.add(int(n))
    return sorted(out)


def hparam_grid(cfg: Dict[str, Any]) -> List[Dict[str, float]]:
    """The grid points of the swept float hyper-parameters (first name varies slowest); [{}] if none."""
    import itertools

    hp = cfg.get("hparams") or {}
    names = [k for k in HPARAM_NAMES if k in hp]
    if not names:
        return [{}]
    return [dict(zip(names, vals)) for vals in itertools.product(*[hp[k] for k in names])]


def run_label(env: str, estimator: str, point: Dict[str, float], dynamics: str = "sim") -> str:
    """The ``run`` column: env/estimator[/model][/hyper-parameters]."""
    label = f"{env}/{estimator}" + ("/model" if dynamics == "model" else "")
    if point:
        label += "/" + ",".join(f"{k}={v:g}" for k, v in point.items())
    return label


def plan_units(cfg: Dict[str, Any]) -> List[Unit]:
    grid = hparam_grid(cfg)
    runs = tuple((g, int(s)) for g in range(len(grid)) for s in cfg["seeds"])
    bs = int(cfg["seed_batch"]) if cfg.get("seed_batch") else len(runs)
    chunks = [runs[i: i + bs] for i in range(0, len(runs), bs)]
    units: List[Unit] = []
    if cfg.get("lqr_probe"):
        for est in cfg["estimators"]:
            units.append(Unit(f"probe-lqr-{est}", "probe", "lqr", est, -1, 0, 1, ()))
    for env in cfg["envs"]:
        T = cfg["env_settings"][env]["episode_length"]
        ns = resolve_ns(cfg["ns"], T)
        dyns = cfg.get("dynamics") or ["sim"]
        for dyn in dyns:
            for est in cfg["estimators"]:
                for n in ns:
                    if dyn == "model" and n == 0 and "sim" in dyns:
                        continue  # n = 0 never touches the dynamics: the "sim" run is the same run
                    for b, chunk in enumerate(chunks):
                        tag = "-model" if dyn == "model" else ""
                        uid = f"train-{env.replace(':', '_')}-{est}{tag}-n{n}-b{b}"
                        units.append(Unit(uid, "train", env, est, n, b, len(chunks), chunk, dyn))
    return units


# --------------------------------------------------------------------------- running it
class Interrupted(Exception):
    """Raised by ``--stop-after``: the run stopped on purpose; resume it with ``--resume``."""


_ARM_CACHE: Dict[Any, Tuple[Arm, Any, Any, List[int]]] = {}
_ARM_LOCK = threading.Lock()


def _arm_and_program(env: str, est: str, n: int, s: EnvSettings, lqr: Dict[str, float], hp_names: Tuple[str, ...],
                     dynamics: str = "sim"):
    """(arm, block_fn, state shapes, trace counter), cached per process so repeated runs reuse
    the compiled program (``mg.sweep`` caches per function object)."""
    import jax

    key = (env, est, n, s, tuple(sorted(lqr.items())), hp_names, dynamics)
    with _ARM_LOCK:
        if key in _ARM_CACHE:
            return _ARM_CACHE[key]
        arm = build_arm(env, est, n, s, lqr, dynamics)
        shapes = jax.eval_shape(arm.agent.init, jax.random.PRNGKey(0), arm.hparams)
        treedef = jax.tree_util.tree_structure(shapes)
        traces: List[int] = []
        _ARM_CACHE[key] = (arm, make_block_fn(arm, hp_names, treedef, traces), shapes, traces)
        return _ARM_CACHE[key]


def _checkpoint_config(cfg: Dict[str, Any], unit: Unit) -> Dict[str, Any]:
    keep = {k: cfg.get(k) for k in ("envs", "estimators", "ns", "seeds", "seed_batch", "hparams", "env_settings", "lqr",
                                    "dynamics")}
    return {"script": SCRIPT, "unit": unit.uid, **keep}


class Runner:
    """Runs the planned units of ``cfg`` into ``run_dir``; resumable from its checkpoints."""

    def __init__(self, cfg: Dict[str, Any], run_dir: str, *, progress: bool = True, stop_after: Optional[int] = None,
                 stream=None, workers: int = 1):
        self.cfg, self.run_dir = cfg, run_dir
        self.units = plan_units(cfg)
        self.grid = hparam_grid(cfg)
        self.progress, self.stop_after = progress, stop_after
        self.stream = stream if stream is not None else sys.stderr
        self.blocks_run = 0
        self.workers = max(1, int(workers))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.timings: Dict[str, Dict[str, float]] = {}
        self.parts = os.path.join(run_dir, "parts")
        self.ckpt = os.path.join(run_dir, "ckpt")
        os.makedirs(self.parts, exist_ok=True)

    # ---- bookkeeping
    def _part_path(self, unit: Unit) -> str:
        return os.path.join(self.parts, unit.uid + ".csv")

    def _unit_blocks(self, unit: Unit) -> int:
        return 1 if unit.kind == "probe" else self.cfg["env_settings"][unit.env]["blocks"]

    def _bar(self):
        total = sum(self._unit_blocks(u) for u in self.units)
        done = 0
        for u in self.units:
            if os.path.exists(self._part_path(u)):
                done += self._unit_blocks(u)
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=done, desc=SCRIPT, unit="block", disable=not self.progress,
                    file=self.stream, dynamic_ncols=True, leave=True)

    def run(self) -> RD.MetricsTable:
        """Run every unit not finished yet (probes first, then training units on ``workers``
        threads: one compiles while another runs), then gather all parts in plan order."""
        import concurrent.futures as cf

        table = RD.MetricsTable()
        bar = self._bar()
        todo = [u for u in self.units if not os.path.exists(self._part_path(u))]
        try:
            for unit in todo:
                if unit.kind == "probe":   # float64 context: never concurrently with float32 tracing
                    self._finish(unit, self._run_probe(unit, bar))
            train = [u for u in todo if u.kind == "train"]
            if self.workers <= 1:
                for unit in train:
                    self._finish(unit, self._run_train(unit, bar))
            else:
                with cf.ThreadPoolExecutor(max_workers=self.workers) as pool:
                    futures = {pool.submit(self._run_train, u, bar): u for u in train}
                    try:
                        for fut in cf.as_completed(futures):
                            self._finish(futures[fut], fut.result())
                    except BaseException:
                        self._stop.set()
                        for f in futures:
                            f.cancel()
                        raise
        finally:
            bar.close()
        for unit in self.units:
            rows = RD.read_metrics(self._part_path(unit))
            table.extend(zip(rows["run"], rows["n"], rows["seed"], rows["step"], rows["metric"], rows["value"]))
        return table

    def _finish(self, unit: Unit, part: RD.MetricsTable) -> None:
        part.write(self._part_path(unit))
        RD.write_json(os.path.join(self.parts, unit.uid + ".timing.json"), self.timings.get(unit.uid, {}))
        self._drop_checkpoints(unit)

    def _drop_checkpoints(self, unit: Unit) -> None:
        import shutil

        shutil.rmtree(os.path.join(self.ckpt, unit.uid), ignore_errors=True)

    def _count_block(self, bar=None, text: Optional[str] = None) -> None:
        with self._lock:
            if bar is not None:
                if text:
                    bar.set_postfix_str(text, refresh=False)
                bar.update(1)
            self.blocks_run += 1
            if self.stop_after is not None and self.blocks_run >= self.stop_after:
                self._stop.set()
        if self._stop.is_set():
            raise Interrupted(f"stopped after {self.blocks_run} block(s) (--stop-after)")

    # ---- LQR probe
    def _run_probe(self, unit: Unit, bar) -> RD.MetricsTable:
        pc = self.cfg["lqr_probe"]
        T = pc["episode_length"]
        ns = resolve_ns(self.cfg["ns"], T)
        bar.set_postfix_str(f"lqr {unit.estimator} gradient probe, n = {ns[0]}…{ns[-1]}")
        t0 = time.perf_counter()
        res = lqr_gradient_probe(unit.estimator, ns, episode_length=T, batches=pc["batches"],
                                 batch_size=pc["batch_size"], critic_errors=pc["critic_errors"],
                                 gamma=pc["gamma"], sigma=pc["sigma"], seed=pc["seed"],
                                 lqr=self.cfg["lqr"])
        self.timings[unit.uid] = {"wall_s": time.perf_counter() - t0}
        part = RD.MetricsTable()
        for i, delta in enumerate(pc["critic_errors"]):
            run = f"lqr/{unit.estimator}/probe/critic_error={delta:g}"
            for n in ns:
                for metric in PROBE_METRICS:
                    part.add(run, n, pc["seed"], 0, metric, res[n][metric][i])
        self._count_block(bar)
        return part

    # ---- training
    def _run_train(self, unit: Unit, bar) -> RD.MetricsTable:
        import jax

        import mbpo_grad as mg
        from mbpo_grad import checkpoint as CK

        s = EnvSettings(**{k: (tuple(v) if isinstance(v, list) else v)
                           for k, v in self.cfg["env_settings"][unit.env].items()})
        hp_names = tuple(k for k in HPARAM_NAMES if k in (self.cfg.get("hparams") or {}))
        arm, block_fn, shapes, _ = _arm_and_program(unit.env, unit.estimator, unit.n, s, self.cfg["lqr"], hp_names,
                                                    unit.dynamics)
        blocks = s.blocks
        lanes = list(unit.runs)
        width = len(plan_units_first_chunk(self.cfg))     # every batch padded to the same width: one program
        lanes_padded = lanes + [lanes[0]] * (width - len(lanes))
        R = len(lanes_padded)
        keydata = np.stack([np.asarray(jax.random.PRNGKey(seed)) for _, seed in lanes_padded]).astype(np.uint32)
        hp_vals = {}
        for name in hp_names:
            hp_vals[f"hp/{name}"] = np.asarray([self.grid[g][name] for g, _ in lanes_padded], np.float32)
        leaves = [np.zeros((R,) + tuple(x.shape), x.dtype) for x in jax.tree_util.tree_leaves(shapes)]
        metrics = {m: np.full((R, blocks), np.nan, np.float64) for m in TRAIN_METRICS if m != "wall_s"}
        durations = np.zeros((blocks,), np.float64)
        first_call = np.zeros((blocks,), bool)
        start = 0
        ck_dir = os.path.join(self.ckpt, unit.uid)
        ck_cfg = _checkpoint_config(self.cfg, unit)
        template = {"state": leaves, "metrics": metrics, "durations": durations, "first_call": first_call,
                    "keys": keydata}
        if CK.latest_step(ck_dir) is not None:
            start, restored = CK.restore(ck_dir, config=ck_cfg, target=template)
            leaves, metrics = restored["state"], restored["metrics"]
            durations, first_call = restored["durations"], restored["first_call"]
        leaves = [np.asarray(x) for x in leaves]
        every = int(self.cfg["checkpoint_every"])
        fresh_process = True
        for b in range(start, blocks):
            p = {"key": keydata, "block": np.full((R,), b, np.int32), **hp_vals}
            p.update({f"state/{i}": x for i, x in enumerate(leaves)})
            t0 = time.perf_counter()
            out = mg.sweep(block_fn, seeds=1, hparams=p, grid=False)
            durations[b] = time.perf_counter() - t0
            first_call[b] = fresh_process
            fresh_process = False
            leaves = [np.asarray(x)[:, 0] for x in jax.tree_util.tree_leaves(out["state"])]
            for m, v in out["metrics"].items():
                metrics[m][:, b] = np.asarray(v)[:, 0]
            ret = float(np.nanmean(metrics["eval_return"][: len(lanes), b]))
            if every > 0 and (b + 1) % every == 0 and b + 1 < blocks:
                CK.save(ck_dir, b + 1, {"state": leaves, "metrics": metrics, "durations": durations,
                                         "first_call": first_call, "keys": keydata}, config=ck_cfg, keep=2)
            dyn = "/model" if unit.dynamics == "model" else ""
            self._count_block(bar, f"{unit.env} {unit.estimator}{dyn} n={unit.n} seeds {unit.batch + 1}/{unit.n_batches} "
                                   f"block {b + 1}/{blocks} return {ret:.4g}")

        # wall-clock without compilation: a block that was the first call of its process is
        # replaced by the median of the others (the difference is reported as compile time).
        dur = durations.copy()
        warm = dur[~first_call]
        compile_s = 0.0
        if warm.size:
            med = float(np.median(warm))
            compile_s = float(np.sum(dur[first_call] - med))
            dur[first_call] = med
        wall = np.cumsum(dur)
        self.timings[unit.uid] = {"run_s": float(wall[-1]), "compile_s": max(compile_s, 0.0),
                                  "iterations": arm.iterations, "eval_every": arm.eval_every,
                                  "lanes": len(lanes)}
        part = RD.MetricsTable()
        steps = [(b + 1) * arm.eval_every for b in range(blocks)]
        for i, (g, seed) in enumerate(lanes):
            run = run_label(unit.env, unit.estimator, self.grid[g], unit.dynamics)
            for b, step_ in enumerate(steps):
                for m in TRAIN_METRICS:
                    v = wall[b] if m == "wall_s" else metrics[m][i, b]
                    part.add(run, unit.n, seed, step_, m, v)
        return part


def plan_units_first_chunk(cfg: Dict[str, Any]) -> Tuple[Tuple[int, int], ...]:
    """The lanes of the first seed batch (its size is the width every batch is padded to)."""
    grid = hparam_grid(cfg)
    runs = tuple((g, int(s)) for g in range(len(grid)) for s in cfg["seeds"])
    bs = int(cfg["seed_batch"]) if cfg.get("seed_batch") else len(runs)
    return runs[:bs]


# --------------------------------------------------------------------------- summary and plots
def summarize(cols: Dict[str, np.ndarray], cfg: Dict[str, Any], timings: Dict[str, Any]) -> Dict[str, Any]:
    """summary.json: final returns per (run, n), best n, gradient statistics, the LQR probe, timings."""
    from experiments.plots import curves, select

    train: Dict[str, Any] = {}
    best: Dict[str, Any] = {}
    probe: Dict[str, Any] = {}
    is_probe = np.char.find(cols["run"].astype(str), "/probe/") >= 0
    for run in sorted(set(cols["run"][~is_probe].tolist())):
        entry = {}
        for n in sorted(set(cols["n"][select(cols, run=run, metric="eval_return")].tolist())):
            _, steps, ret = curves(cols, run, n, "eval_return")
            _, _, env_steps = curves(cols, run, n, "env_steps")
            _, _, wall = curves(cols, run, n, "wall_s")
            _, _, gvar = curves(cols, run, n, "grad_var")
            _, _, gnorm = curves(cols, run, n, "grad_norm")
            final = ret[:, -1]
            entry[str(n)] = {
                "final_eval_return_mean": float(np.nanmean(final)) if np.isfinite(final).any() else None,
                "final_eval_return_std": float(np.nanstd(final)) if np.isfinite(final).any() else None,
                "final_eval_return_per_seed": final.tolist(),
                "iterations": int(steps[-1]),
                "env_steps": float(np.nanmean(env_steps[:, -1])),
                "wall_s": float(np.nanmean(wall[:, -1])),
                "grad_var_mean": float(np.nanmean(gvar)) if np.isfinite(gvar).any() else None,
                "grad_norm_mean": float(np.nanmean(gnorm)) if np.isfinite(gnorm).any() else None,
            }
        train[run] = entry
        scored = [(v["final_eval_return_mean"], int(n)) for n, v in entry.items() if v["final_eval_return_mean"] is not None]
        if scored:
            best[run] = max(scored)[1]
    for run in sorted(set(cols["run"][is_probe].tolist())):
        entry = {}
        for n in sorted(set(cols["n"][select(cols, run=run)].tolist())):
            entry[str(n)] = {m: float(cols["value"][select(cols, run=run, n=n, metric=m)][0]) for m in PROBE_METRICS}
        probe[run] = entry
        mse = {int(n): v["grad_mse"] for n, v in entry.items()}
        best[run] = min(mse, key=mse.get)
    fulls = {env: cfg["env_settings"][env]["episode_length"] for env in cfg["envs"]}
    return {
        "tables": _tables(train, probe, best, timings),
        "script": SCRIPT,
        "status": "complete",
        "full_episode_n": fulls,
        "ns": {env: resolve_ns(cfg["ns"], T) for env, T in fulls.items()},
        "best_n": best,
        "train": train,
        "lqr_probe": probe,
        "timings": timings,
    }


def _pm(mean, std) -> Optional[str]:
    if mean is None:
        return None
    return f"{mean:.4g} ± {std:.2g}"


def _tables(train, probe, best, timings) -> List[Dict[str, Any]]:
    """The summary's tables (rendered by ``experiments.report``)."""
    tables = []
    if train:
        runs = list(train)
        ns = sorted({int(n) for e in train.values() for n in e})
        rows = []
        for n in ns:
            row: List[Any] = [n]
            for r in runs:
                e = train[r].get(str(n))
                row.append(_pm(e["final_eval_return_mean"], e["final_eval_return_std"]) if e else None)
            rows.append(row)
        tables.append({"title": "Final evaluation return (mean ± std over seeds)", "columns": ["n"] + runs,
                       "rows": rows})
        rows = []
        for r in runs:
            if r in best:
                e = train[r][str(best[r])]
                rows.append([r, best[r], _pm(e["final_eval_return_mean"], e["final_eval_return_std"]),
                             e["env_steps"], e["grad_var_mean"]])
        tables.append({"title": "Best unroll length per run", "columns": ["run", "best n", "final return",
                       "env steps", "mean gradient variance"], "rows": rows})
    for r, e in probe.items():
        rows = [[int(n)] + [v[m] for m in ("grad_bias", "grad_var", "grad_mse", "grad_bias_rel", "grad_var_rel",
                                            "mc_mean_error_z")] for n, v in e.items()]
        tables.append({"title": f"LQR gradient probe: {r}",
                       "note": "bias = ‖E ĝ_n − ∇J‖ (exact), variance = E‖ĝ_n − E ĝ_n‖² over independent batches; "
                               "rel: divided by ‖∇J‖ (‖∇J‖²); z: Monte-Carlo mean vs the exact mean (≈ 1).",
                       "columns": ["n", "bias", "variance", "MSE", "bias rel", "variance rel", "MC z"], "rows": rows})
    if timings:
        rows = [[uid, t.get("iterations"), t.get("lanes"), t.get("compile_s"), t.get("run_s", t.get("wall_s"))]
                for uid, t in timings.items()]
        tables.append({"title": "Timing per unit (seconds)", "columns": ["unit", "iterations", "lanes",
                       "compile (est.)", "run"], "rows": rows})
    return tables


def make_plots(cols: Dict[str, np.ndarray], cfg: Dict[str, Any], run_dir: str) -> List[str]:
    """Every PNG of the run; returns their file names."""
    from experiments import plots as PL

    written: List[str] = []
    fulls = {env: cfg["env_settings"][env]["episode_length"] for env in cfg["envs"]}
    grid = hparam_grid(cfg)
    groups: Dict[str, List[str]] = {}
    for env in cfg["envs"]:
        for point in grid:
            runs = [run_label(env, est, point, dyn) for dyn in (cfg.get("dynamics") or ["sim"])
                    for est in cfg["estimators"]]
            runs = [r for r in runs if PL.select(cols, run=r).any()]
            if not runs:
                continue
            group = run_label(env, "", point).replace("//", "/").rstrip("/")
            groups[group] = runs
            fulls[group] = fulls[env]
            name = f"curves_{PL.safe_name(group)}.png"
            PL.plot_return_curves(cols, runs, os.path.join(run_dir, name), full=fulls[env],
                                  title=f"{group}: evaluation return per unroll length n (band: min–max over seeds)")
            written.append(name)
    if groups:
        PL.plot_final_vs_n(cols, groups, os.path.join(run_dir, "final_return_vs_n.png"), fulls=fulls)
        PL.plot_grad_vs_n(cols, groups, os.path.join(run_dir, "grad_stats_vs_n.png"), fulls=fulls)
        written += ["final_return_vs_n.png", "grad_stats_vs_n.png"]
    probe_runs = sorted({r for r in cols["run"].tolist() if "/probe/" in r})
    if probe_runs:
        PL.plot_lqr_probe(cols, probe_runs, os.path.join(run_dir, "lqr_bias_variance_vs_n.png"),
                          full=cfg["lqr_probe"]["episode_length"])
        written.append("lqr_bias_variance_vs_n.png")
    return written


# --------------------------------------------------------------------------- command line
def _n_value(text: str):
    return RD.unroll_length(text, minimum=0)


def build_parser() -> RD.CliParser:
    p = RD.CliParser(prog=f"python -m experiments.{SCRIPT}",
                     description="Compare unroll lengths n of pathwise policy gradients (DPMB-R-n and SVG(n), "
                                 "n = 0 … full episode) across environments; writes a run folder with "
                                 "config.json, metrics.csv, summary.json and plots.")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the default: pendulum training and the LQR gradient "
                      "probe, both estimators, every n, 4 seeds, small budgets (< 10 min on 2 CPU cores; add LQR, "
                      "cart-pole or Brax training with --envs)")
    size.add_argument("--full", action="store_true", help="LQR, pendulum, cart-pole, Brax inverted pendulum, "
                      "half-cheetah and ant; 16 seeds; large budgets (a GPU job)")
    size.add_argument("--tiny", action="store_true", help="a smoke configuration (tests): LQR, n = 0, 4 and full, both "
                      "estimators, 2 seeds, the LQR probe; under a minute on 2 CPU cores, nearly all compilation")
    p.add_argument("--envs", nargs="+", metavar="ENV",
                   help="lqr, pendulum, cartpole, inverted_pendulum, halfcheetah, ant or brax:<name> "
                        "(default: the preset's)")
    p.add_argument("--ns", nargs="+", metavar="N", help="unroll lengths: ints >= 0 and/or 'full' "
                   "(default 0 1 2 4 8 16 32 64 full; n > episode length is dropped)")
    p.add_argument("--estimators", nargs="+", metavar="EST", help=f"subset of {list(ESTIMATORS)} (default both)")
    p.add_argument("--seeds", type=int, metavar="K", help="seeds 0..K-1 (default: the preset's)")
    p.add_argument("--seed-batch", type=int, metavar="B", help="lanes (seed × hyper-parameter runs) per compiled "
                   "call; default all of them in one")
    for name, what in (("actor-lr", "actor learning rates"), ("critic-lr", "critic learning rates"),
                       ("lam", "TD(λ) values"), ("gamma", "discounts")):
        p.add_argument(f"--{name}", nargs="+", type=float, metavar="X",
                       help=f"sweep these {what} (vmapped with the seeds, no recompilation)")
    p.add_argument("--env-steps", type=int, metavar="S", help="environment-step budget per run (all envs)")
    p.add_argument("--blocks", type=int, metavar="K", help="evaluations (logged points) per run")
    p.add_argument("--dynamics", nargs="+", choices=("sim", "model"), default=["sim"],
                   help="differentiate through the simulator (default) and/or a learned ensemble model "
                        "(agents.model_based, branched from replayed real states)")
    p.add_argument("--no-lqr-probe", action="store_true", help="skip the LQR gradient bias/variance probe "
                   "(it runs whatever --envs says; its episode length is the preset's LQR one)")
    p.add_argument("--probe-batches", type=int, metavar="M", help="independent batches in the LQR probe")
    p.add_argument("--checkpoint-every", type=int, default=2, metavar="K",
                   help="checkpoint every K blocks (0: never); default 2")
    p.add_argument("--out", metavar="DIR", help="run folder (default: a new runs/compare_unroll_lengths-<time>/)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run in RUN_DIR (its config.json "
                   "decides everything; other options except --no-progress/--stop-after are ignored)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--workers", type=int, default=2, metavar="W",
                   help="programs in flight at once (threads; one compiles while another runs); default 2")
    p.add_argument("--stop-after", type=int, metavar="K", help="debug: stop after K blocks (to test --resume)")
    return p


def _canonical_env(p: RD.CliParser, name: str) -> str:
    if name in ENV_ALIASES:
        return ENV_ALIASES[name]
    if name.startswith("brax:"):
        from mbpo_grad.envs import brax_adapter

        if name.split(":", 1)[1] not in brax_adapter.available_envs():
            p.fail(f"--envs: unknown Brax environment {name!r}")
        return name
    p.fail(f"--envs: unknown environment {name!r}; expected one of {sorted(ENV_ALIASES)} or brax:<name>")


def resolve_config(args, p: RD.CliParser) -> Dict[str, Any]:
    """The full, JSON-serialisable experiment config from parsed arguments (exit 2 on bad input)."""
    preset = "full" if args.full else "tiny" if args.tiny else "quick"
    pre = PRESETS[preset]
    table = _settings(preset)
    envs_ = [_canonical_env(p, e) for e in (args.envs or pre["envs"])]
    if len(set(envs_)) != len(envs_):
        p.fail(f"--envs: an environment is listed twice: {args.envs}")
    try:
        ns = [_n_value(x) for x in args.ns] if args.ns else list(pre["ns"])
    except ValueError as err:
        p.fail(str(err))
    ests = args.estimators or list(ESTIMATORS)
    for e in ests:
        if e not in ESTIMATORS:
            p.fail(f"--estimators: unknown estimator {e!r}; expected {list(ESTIMATORS)}")
    seeds = pre["seeds"] if args.seeds is None else args.seeds
    if seeds < 1:
        p.fail(f"--seeds must be >= 1, got {seeds}")
    if args.seed_batch is not None and args.seed_batch < 1:
        p.fail(f"--seed-batch must be >= 1, got {args.seed_batch}")
    if args.checkpoint_every < 0:
        p.fail(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    if args.workers < 1:
        p.fail(f"--workers must be >= 1, got {args.workers}")
    if args.stop_after is not None and args.stop_after < 1:
        p.fail(f"--stop-after must be >= 1, got {args.stop_after}")
    hparams = {}
    for name in HPARAM_NAMES:
        vals = getattr(args, name)
        if vals is None:
            continue
        if name in ("actor_lr", "critic_lr") and any(not (v > 0 and math.isfinite(v)) for v in vals):
            p.fail(f"--{name.replace('_', '-')} values must be finite and > 0, got {vals}")
        if name in ("lam", "gamma") and any(not 0.0 <= v <= 1.0 for v in vals):
            p.fail(f"--{name} values must lie in [0, 1], got {vals}")
        hparams[name] = [float(v) for v in vals]
    env_settings = {}
    for env in envs_:
        s = table.get(env)
        if s is None:  # a Brax env the preset does not tune: the inverted-pendulum settings
            s = table.get("brax:inverted_pendulum") or _settings("quick")["brax:inverted_pendulum"]
        if args.env_steps is not None:
            if args.env_steps < 1:
                p.fail(f"--env-steps must be >= 1, got {args.env_steps}")
            s = dataclasses.replace(s, env_steps=args.env_steps)
        if args.blocks is not None:
            if args.blocks < 1:
                p.fail(f"--blocks must be >= 1, got {args.blocks}")
            s = dataclasses.replace(s, blocks=args.blocks)
        env_settings[env] = dataclasses.asdict(s)
    dynamics = list(dict.fromkeys(args.dynamics))
    if "model" in dynamics:
        try:
            from mbpo_grad.agents import model_based  # noqa: F401
        except ImportError:
            p.fail("--dynamics model needs mbpo_grad.agents.model_based, which this checkout does not have; "
                   "use --dynamics sim (or experiments.model_vs_sim for model-vs-simulator gradients)")
    probe = None
    if not args.no_lqr_probe:
        batches = args.probe_batches or pre["probe_batches"]
        if batches < 2:
            p.fail(f"--probe-batches must be >= 2, got {batches}")
        lqr_s = env_settings.get("lqr") or dataclasses.asdict(table["lqr"])
        probe = {"batches": batches, "batch_size": pre["probe_batch"], "critic_errors": [-0.2, 0.0, 0.2],
                 "sigma": 0.3, "seed": 0, "episode_length": lqr_s["episode_length"], "gamma": lqr_s["gamma"]}
    return {
        "script": SCRIPT, "preset": preset, "envs": envs_, "estimators": ests, "ns": ns,
        "seeds": list(range(seeds)), "seed_batch": args.seed_batch, "hparams": hparams,
        "env_settings": env_settings, "lqr": dict(LQR_DEFAULT), "lqr_probe": probe,
        "dynamics": dynamics, "checkpoint_every": args.checkpoint_every,
    }


def run_experiment(cfg: Dict[str, Any], run_dir: str, *, progress: bool = True, stop_after: Optional[int] = None,
                   stream=None, workers: int = 2) -> Dict[str, Any]:
    """Run (or continue) the experiment of ``cfg`` in ``run_dir``; write metrics, summary, plots.

    Raises ``Interrupted`` when ``stop_after`` blocks have run (the checkpoints stay).
    Returns the summary dict.
    """
    t0 = time.perf_counter()
    runner = Runner(cfg, run_dir, progress=progress, stop_after=stop_after, stream=stream, workers=workers)
    table = runner.run()
    table.write(os.path.join(run_dir, "metrics.csv"))
    cols = RD.read_metrics(os.path.join(run_dir, "metrics.csv"))
    timings = {}
    for u in runner.units:
        tp = os.path.join(runner.parts, u.uid + ".timing.json")
        if os.path.exists(tp):
            timings[u.uid] = RD.read_json(tp)
    summary = summarize(cols, cfg, timings)
    summary["plots"] = make_plots(cols, cfg, run_dir)
    summary["wall_s_this_process"] = time.perf_counter() - t0
    RD.write_json(os.path.join(run_dir, "summary.json"), summary)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.resume is not None:
        cfg_path = os.path.join(args.resume, "config.json")
        if not os.path.isdir(args.resume):
            p.fail(f"--resume: no run folder {args.resume!r}")
        if not os.path.isfile(cfg_path):
            p.fail(f"--resume: {args.resume!r} has no config.json (not a run folder of this script)")
        try:
            meta = RD.read_json(cfg_path)
            cfg = meta["config"]
        except (ValueError, KeyError) as err:
            p.fail(f"--resume: cannot read {cfg_path!r}: {err}")
        if cfg.get("script") != SCRIPT:
            p.fail(f"--resume: {args.resume!r} is a run of {cfg.get('script')!r}, not {SCRIPT}")
        run_dir = os.path.abspath(args.resume)
        if cfg.get("preset") != "full":
            RD.cpu_fast_compile()
    else:
        if not args.full:
            RD.cpu_fast_compile()
        cfg = resolve_config(args, p)
        if args.out is not None and os.path.isfile(os.path.join(args.out, "config.json")):
            p.fail(f"--out: {args.out!r} already holds a run; continue it with --resume {args.out} or choose "
                   "another folder")
        try:
            run_dir = RD.new_run_dir(SCRIPT, out=args.out)
        except (ValueError, OSError) as err:
            p.fail(f"--out: {err}")
        RD.write_json(os.path.join(run_dir, "config.json"), {
            "config": cfg, "argv": list(sys.argv[1:] if argv is None else argv), "environment": RD.environment_info()})
    print(f"run folder: {run_dir}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        summary = run_experiment(cfg, run_dir, progress=not args.no_progress, stop_after=args.stop_after,
                                 workers=args.workers)
    except Interrupted as err:
        print(f"{err}; continue with: python -m experiments.{SCRIPT} --resume {run_dir}", file=sys.stderr)
        return 0
    print(f"done in {time.perf_counter() - t0:.1f} s: {run_dir}", file=sys.stderr)
    for run, n in summary["best_n"].items():
        print(f"  best n for {run}: {n}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
