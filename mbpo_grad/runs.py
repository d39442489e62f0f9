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
import math
import os
import secrets
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
METRIC_COLUMNS = ("run", "n", "seed", "step", "metric", "value")


# --------------------------------------------------------------------------- small files
def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file in the same folder, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None  # JSON has no NaN / inf
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if hasattr(x, "shape") and hasattr(x, "dtype"):  # jax arrays
        return _jsonable(np.asarray(x))
    return x


def write_json(path: str, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (NumPy values converted; NaN/inf become null)."""
    write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def format_value(v: Any) -> str:
    """A metrics.csv value: the shortest text that reads back to the same float64 ("nan", "inf")."""
    v = float(v)
    if math.isnan(v):
        return "nan"
    return repr(v)


class MetricsTable:
    """Rows of the long-format ``metrics.csv``: (run, n, seed, step, metric, value).

    ``add(run, n, seed, step, metric, value)`` one row; ``add_array(run, n, seeds, steps,
    metric, values[seeds, steps])`` a block. Values are written with ``repr`` so they read
    back bit-identical as float64 (float32 values are exact in float64).
    """

    def __init__(self):
        self._rows: List[tuple] = []

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, run: str, n: int, seed: int, step: int, metric: str, value: Any) -> None:
        self._rows.append((str(run), int(n), int(seed), int(step), str(metric), format_value(value)))

    def add_array(self, run: str, n: int, seeds: Sequence[int], steps: Sequence[int], metric: str,
                  values: Any) -> None:
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (len(seeds), len(steps)):
            raise ValueError(f"values must have shape [seeds, steps] = [{len(seeds)}, {len(steps)}], got {values.shape}")
        for i, seed in enumerate(seeds):
            for j, step in enumerate(steps):
                self.add(run, n, seed, step, metric, values[i, j])

    def extend(self, rows: Iterable[Sequence[Any]]) -> None:
        for r in rows:
            self.add(*r)

    def rows(self) -> List[tuple]:
        return list(self._rows)

    def to_csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(METRIC_COLUMNS)
        w.writerows(self._rows)
        return buf.getvalue()

    def write(self, path: str) -> None:
        write_text(path, self.to_csv_text())


def read_metrics(path: str) -> Dict[str, np.ndarray]:
    """``metrics.csv`` as columns: run, metric (str arrays), n, seed, step (int64), value (float64)."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != METRIC_COLUMNS:
            raise ValueError(f"{path}: expected the header {','.join(METRIC_COLUMNS)}, got {header}")
        rows = list(reader)
    cols = list(zip(*rows)) if rows else [()] * len(METRIC_COLUMNS)
    return {
        "run": np.asarray(cols[0], dtype=str),
        "n": np.asarray(cols[1], dtype=np.int64),
        "seed": np.asarray(cols[2], dtype=np.int64),
        "step": np.asarray(cols[3], dtype=np.int64),
        "metric": np.asarray(cols[4], dtype=str),
        "value": np.asarray(cols[5], dtype=np.float64),
    }


def environment_info() -> Dict[str, Any]:
    """Versions and devices, recorded in config.json."""
    info: Dict[str, Any] = {"python": sys.version.split()[0], "jax": jax.__version__,
                            "backend": jax.default_backend(),
                            "devices": [str(d) for d in jax.devices()],
                            "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    try:
        import mbpo_grad

        info["mbpo_grad"] = getattr(mbpo_grad, "__version__", "?")
    except Exception:  # pragma: no cover - importing the package is not the point here
        pass
    return info


def _per_iteration(metrics: Dict[str, Any]) -> Dict[str, Any]:
    """The per-iteration metrics (one value per iteration), without the evaluations and wall time."""
    return {k: v for k, v in metrics.items()
            if k not in ("eval_iteration", "eval_return", "eval_env_steps", "wall_s") and np.ndim(v) == 1}


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
            "module": agent_module(config),
            "config_class": type(config).__qualname__,
            "config": dataclasses.asdict(config),
            "hparams": guard["hparams"],
            "key": guard["key"],
            "custom_env": guard.get("env"),
            "custom_policy": guard.get("policy"),
            "spec": agent.spec,
            "environment": environment_info(),
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

    def block(self, metrics: Dict[str, Any], new: slice) -> None:
        """After each block: TensorBoard scalars of the block's iterations and metrics.csv so far.

        ``metrics``: every metric so far with the evaluations (``driver.with_evals``); ``new``: the
        block's iterations (0-based slice).
        """
        if self.tb is not None:
            per_it = _per_iteration(metrics)
            for i in range(new.start, new.stop):
                x = self._x(metrics, i + 1)
                for k, v in per_it.items():
                    val = float(np.asarray(v)[i])
                    if np.isfinite(val):
                        self.tb.add_scalar(f"train/{k}", val, x)
            its = np.asarray(metrics["eval_iteration"])
            if its.size:
                self.tb.add_scalar("eval/episode_return", float(np.asarray(metrics["eval_return"])[-1]),
                                   self._x(metrics, int(its[-1])))
            self.tb.flush()
        self.write_metrics(metrics)

    def write_metrics(self, metrics: Dict[str, Any]) -> None:
        """metrics.csv: every per-iteration metric, then the evaluations (a deterministic order)."""
        table = MetricsTable()
        per_it = _per_iteration(metrics)
        for k in sorted(per_it):
            v = np.asarray(per_it[k])
            table.add_array(self.agent.name, self.n, [self.seed], np.arange(1, v.size + 1), k, v[None])
        if "eval_return" in metrics:
            table.add_array(self.agent.name, self.n, [self.seed], np.asarray(metrics["eval_iteration"]).tolist(),
                            "eval_return", np.asarray(metrics["eval_return"])[None])
        table.write(os.path.join(self.dir, "metrics.csv"))

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


def agent_module(config) -> str:
    """The agent's public module for its config: the innermost package above
    ``type(config).__module__`` that exports the config class and ``make_act_for``
    (``mbpo_grad.agents.shac`` for ``mbpo_grad.agents.shac.config.SHACConfig``), so a run folder
    names the module a user imports, and stays loadable when an agent's files are rearranged."""
    parts = type(config).__module__.split(".")
    for i in range(len(parts), 0, -1):
        module = importlib.import_module(".".join(parts[:i]))
        if getattr(module, type(config).__qualname__, None) is type(config) and hasattr(module, "make_act_for"):
            return module.__name__
    return type(config).__module__


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
        env = common.make_env(spec["env"], x64=bool(getattr(info["config"], "x64", False)))
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


__all__ = ["RunWriter", "load_policy", "load_config", "evaluate_saved", "plot_learning_curve", "write_json",
           "read_json", "write_text", "format_value", "environment_info", "MetricsTable", "read_metrics",
           "METRIC_COLUMNS"]
