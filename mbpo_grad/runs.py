"""Run folders people can use, and saved policies that load back in one line.

    make_policy, params, metrics = shac.train(cfg, key, run_dir="runs/a")
    act, info = mg.load_policy("runs/a")          # jitted act(obs), normalisation inside
    act(obs)

A run folder (written by ``RunWriter``, which every agent's ``train(..., run_dir=)`` uses)::

    config.json       agent, module, config class and fields, hyper-parameters, seed key, env and
                      policy spec, versions — written before training starts
    metrics.csv       long format (run, n, seed, step, metric, value): every per-iteration metric
                      (step = iteration) and the evaluations; rewritten after every block
    tensorboard/      TensorBoard event files (tensorboardX): train/<metric> per iteration and
                      eval/episode_return per evaluation, x-axis = environment steps
    policy/           the final policy parameters (Orbax, ``checkpoint.save_pytree``) with the
                      spec needed to rebuild the policy
    learning_curve.png  evaluation return (and training-episode return) against env steps
    summary.json      status ("running", "finished", "stopped"), final evaluation return, env
                      steps, wall time, the key of the final evaluation
    ckpt/             checkpoints, when asked for

``load_policy(run_dir)`` rebuilds the agent's evaluation policy from config.json (the agent
module's ``default_policy`` and ``make_act``) and the saved parameters; pass ``policy=`` when
the run used a custom policy bundle (it cannot be rebuilt from a name). ``evaluate_saved``
re-runs the final evaluation: with the saved key it gives the run's final ``eval_return``.

Why a module of our own: the TensorBoard writer is tensorboardX's, the policy files are
Orbax's (``mbpo_grad.checkpoint``); what is ours is the layout and the rebuild-from-config.
"""
from __future__ import annotations

import csv
import dataclasses
import importlib
import io
import json
import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
METRIC_COLUMNS = ("run", "n", "seed", "step", "metric", "value")


# --------------------------------------------------------------------------- small files
def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.generic, np.ndarray)) or hasattr(x, "__array__"):
        a = np.asarray(x)
        return a.item() if a.ndim == 0 else a.tolist()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (temporary file, then rename)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(_jsonable(obj), f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _fmt(v: float) -> str:
    v = float(v)
    if np.isnan(v):
        return "nan"
    if np.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(v)


def versions() -> Dict[str, Any]:
    out = {"jax": jax.__version__, "backend": jax.default_backend(),
           "devices": [str(d) for d in jax.devices()]}
    try:
        import mbpo_grad
        out["mbpo_grad"] = mbpo_grad.__version__
    except Exception:  # pragma: no cover
        pass
    return out


# --------------------------------------------------------------------------- the writer
class RunWriter:
    """Writes a run folder while ``driver.run`` trains (see the module docstring for the layout).

    ``guard``: the checkpoint guard dict (agent, config, hparams, key, custom env / policy);
    ``agent``: the ``Agent`` (its ``spec``); ``config``: the agent's config dataclass;
    ``info``: extra JSON facts (CLI arguments, a seed); ``resuming``: keep an existing config.json.
    """

    def __init__(self, run_dir: str, guard: Dict[str, Any], *, agent, config, tensorboard: bool = True,
                 info: Optional[Dict[str, Any]] = None, resuming: bool = False):
        if os.path.exists(run_dir) and not os.path.isdir(run_dir):
            raise ValueError(f"run_dir: {run_dir!r} exists and is not a folder")
        os.makedirs(run_dir, exist_ok=True)
        self.dir = os.path.abspath(run_dir)
        self.agent, self.config = agent, config
        self.info = dict(info or {})
        self.seed = int(self.info.get("seed", 0))
        self.n = int(getattr(config, "horizon", 0) or 0)
        self.t0 = time.perf_counter()
        self.meta = {
            **self.info,
            "agent": agent.name,
            "module": type(config).__module__,
            "config_class": type(config).__qualname__,
            "config": dataclasses.asdict(config),
            "hparams": guard["hparams"],
            "key": guard["key"],
            "custom_env": guard.get("env"),
            "custom_policy": guard.get("policy"),
            "spec": agent.spec,
            "environment": versions(),
        }
        cfg_path = os.path.join(self.dir, "config.json")
        if not (resuming and os.path.isfile(cfg_path)):
            write_json(cfg_path, self.meta)
        self._status("running")
        self.tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(logdir=os.path.join(self.dir, "tensorboard"), flush_secs=5)

    def _status(self, status: str, **extra) -> None:
        write_json(os.path.join(self.dir, "summary.json"), {"status": status, "agent": self.agent.name, **extra})

    def _x(self, metrics: Dict[str, np.ndarray], it: int) -> int:
        """The TensorBoard x value of iteration ``it`` (1-based): env steps when reported."""
        if "env_steps" in metrics:
            return int(np.asarray(metrics["env_steps"])[it - 1])
        return int(it)

    def block(self, prog, new: slice) -> None:
        """After each block: TensorBoard scalars of the block's iterations and metrics.csv so far."""
        m = prog.metrics
        if self.tb is not None:
            for i in range(new.start, new.stop):
                x = self._x(m, i + 1)
                for k, v in m.items():
                    val = float(np.asarray(v)[i])
                    if np.isfinite(val):
                        self.tb.add_scalar(f"train/{k}", val, x)
            its = np.asarray(prog.eval_iteration)
            if its.size:
                self.tb.add_scalar("eval/episode_return", float(np.asarray(prog.eval_return)[-1]),
                                   self._x(m, int(its[-1])))
            self.tb.flush()
        self.write_metrics({**m, "eval_iteration": np.asarray(prog.eval_iteration),
                            "eval_return": np.asarray(prog.eval_return)})

    def write_metrics(self, metrics: Dict[str, Any]) -> None:
        """metrics.csv: every per-iteration metric, then the evaluations (a deterministic order)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(METRIC_COLUMNS)
        run = self.agent.name
        per_it = {k: v for k, v in metrics.items()
                  if k not in ("eval_iteration", "eval_return", "eval_env_steps", "wall_s") and np.ndim(v) == 1}
        for k in sorted(per_it):
            for i, v in enumerate(np.asarray(per_it[k]).tolist()):
                w.writerow((run, self.n, self.seed, i + 1, k, _fmt(v)))
        if "eval_return" in metrics:
            for it, v in zip(np.asarray(metrics["eval_iteration"]).tolist(), np.asarray(metrics["eval_return"]).tolist()):
                w.writerow((run, self.n, self.seed, int(it), "eval_return", _fmt(v)))
        path = os.path.join(self.dir, "metrics.csv")
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(buf.getvalue())
        os.replace(tmp, path)

    def stopped(self, metrics: Dict[str, Any], message: str, *, iteration: int) -> None:
        """A health monitor stopped the run after ``iteration`` iterations: metrics so far, status "stopped"."""
        self.write_metrics(metrics)
        self._status("stopped", error=message, stopped_at_iteration=int(iteration))
        self.close()

    def finish(self, metrics: Dict[str, Any], policy_params: PyTree, *, final_eval_key: np.ndarray) -> None:
        """At the end: metrics.csv, the policy, the learning curve, summary.json ("finished")."""
        from mbpo_grad import checkpoint as ckpt

        self.write_metrics(metrics)
        ckpt.save_pytree(os.path.join(self.dir, "policy"), policy_params,
                         metadata={"agent": self.agent.name, "spec": self.agent.spec})
        plot_learning_curve(os.path.join(self.dir, "learning_curve.png"), metrics, title=self.agent.name)
        final = float(np.asarray(metrics["eval_return"])[-1])
        steps = metrics.get("env_steps")
        self._status("finished", final_eval_return=final,
                     env_steps=None if steps is None else int(np.asarray(steps)[-1]),
                     iterations=int(self.config.iterations), wall_s=float(metrics.get("wall_s", 0.0)),
                     final_eval_key=np.asarray(final_eval_key).tolist())
        self.close()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def plot_learning_curve(path: str, metrics: Dict[str, Any], *, title: str = "") -> None:
    """Evaluation return (markers) and training-episode return (line) against env steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = np.asarray(metrics["eval_iteration"])
    x_all = np.asarray(metrics["env_steps"]) if "env_steps" in metrics else np.arange(1, len(its) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if "episode_return" in metrics:
        ax.plot(x_all, np.asarray(metrics["episode_return"]), lw=1, alpha=0.6, label="training episodes")
    ax.plot(x_all[its - 1] if "env_steps" in metrics else its, np.asarray(metrics["eval_return"]), "o-",
            label="evaluation (deterministic)")
    ax.set_xlabel("environment steps" if "env_steps" in metrics else "iteration")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- loading
def _tuples(cfg_cls, values: Dict[str, Any]) -> Dict[str, Any]:
    """JSON lists back to the tuples the config dataclass declares (network sizes)."""
    out = {}
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    for k, v in values.items():
        if k not in fields:
            continue
        out[k] = tuple(v) if isinstance(v, list) else v
    return out


def load_config(run_dir: str):
    """(config dataclass, config.json dict) of a run folder."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"run_dir: {run_dir!r} has no config.json (not a run folder written by train(run_dir=))")
    meta = read_json(path)
    for k in ("module", "config_class", "config", "spec"):
        if k not in meta:
            raise ValueError(f"run_dir: {path} has no {k!r} entry: not written by mbpo_grad's train(run_dir=)")
    module = importlib.import_module(meta["module"])
    cfg_cls = getattr(module, meta["config_class"])
    return cfg_cls(**_tuples(cfg_cls, meta["config"])), meta


def load_policy(run_dir: str, *, policy=None) -> Tuple[Callable[[jax.Array], jax.Array], Dict[str, Any]]:
    """The saved policy of a run folder: ``(act, info)``.

    ``act(obs)`` is jitted, takes one raw observation [obs_size] or a batch [B, obs_size], and
    applies the run's observation normalisation. ``info``: the config dataclass (``config``),
    the parameters (``params``), ``make_policy`` (to rebuild ``act`` from other parameters),
    ``act_fn`` (the pure ``act(params, obs)``), ``spec`` and the run's ``summary``. ``policy``:
    the policy bundle when the run used a custom one (required then: a custom bundle cannot
    be rebuilt from its name).
    """
    from mbpo_grad import checkpoint as ckpt
    from mbpo_grad.agents.driver import make_policy_fn

    config, meta = load_config(run_dir)
    pdir = os.path.join(run_dir, "policy")
    if not os.path.exists(pdir):
        raise ValueError(f"run_dir: {run_dir!r} has no saved policy (policy/): the run did not finish")
    module = importlib.import_module(meta["module"])
    spec = meta["spec"]
    if policy is None and meta.get("custom_policy"):
        raise ValueError(f"policy: the run in {run_dir!r} used a custom policy bundle {meta['custom_policy']!r}; "
                         "pass the same bundle as load_policy(run_dir, policy=...)")
    act_fn = module.make_act_for(config, spec, policy)
    params, _ = ckpt.load_pytree(pdir)
    make_policy = make_policy_fn(act_fn)
    summary_path = os.path.join(run_dir, "summary.json")
    summary = read_json(summary_path) if os.path.isfile(summary_path) else {}
    info = {"config": config, "params": params, "make_policy": make_policy, "act_fn": act_fn, "spec": spec,
            "summary": summary, "meta": meta}
    return make_policy(params), info


def evaluate_saved(run_dir: str, *, env=None, policy=None, key: Optional[jax.Array] = None,
                   num_envs: Optional[int] = None) -> float:
    """Mean return of the saved policy over fresh episodes (``common.evaluate_policy``).

    With the defaults (the run's env by name, its ``eval_envs`` and the key of its final
    evaluation) this is the run's final ``eval_return``. ``env``: the env object when the run
    used a custom one.
    """
    from mbpo_grad.agents import common

    act, info = load_policy(run_dir, policy=policy)
    spec, meta = info["spec"], info["meta"]
    if env is None:
        if meta.get("custom_env"):
            raise ValueError(f"env: the run in {run_dir!r} used a custom env {meta['custom_env']!r}; pass it as env=")
        env = common.make_env(spec["env"], **_env_kwargs(info["config"]))
    if key is None:
        k = info["summary"].get("final_eval_key")
        if k is None:
            raise ValueError(f"run_dir: {run_dir!r} has no final_eval_key in summary.json; pass key=")
        key = jnp.asarray(np.asarray(k, np.uint32))
    n = int(spec["eval_envs"] if num_envs is None else num_envs)
    dtype = jnp.float64 if getattr(info["config"], "x64", False) else None
    remat = getattr(info["config"], "remat", False)
    fn = jax.jit(lambda p, k: common.evaluate_policy(env, info["act_fn"], p, k, num_envs=n,
                                                       episode_length=int(spec["episode_length"]),
                                                       dtype=dtype, remat=remat))
    return float(fn(info["params"], key))


def _env_kwargs(config) -> Dict[str, Any]:
    name = getattr(config, "env", "")
    simulator = isinstance(name, str) and name.split(":")[0] in ("brax", "mjx")
    return {"x64": True} if getattr(config, "x64", False) and simulator else {}


__all__ = ["RunWriter", "load_policy", "load_config", "evaluate_saved", "plot_learning_curve", "write_json",
           "read_json", "METRIC_COLUMNS"]
