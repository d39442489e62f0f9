"""A MuJoCo model stepped with ``mujoco.mjx``, in the engine's form (``envs.base.Env``).

    env = envs.make("mjx:inverted_pendulum", x64=True)       # builtin cart-pole
    env = envs.make("mjx:/path/to/model.xml", reward=my_reward)
    env = envs.from_mjx(mujoco.MjModel.from_xml_string(xml), reward=my_reward)

``from_mjx(mj_model, reward=...)`` takes a ``mujoco.MjModel`` you built; ``make``
loads the builtin or the XML file and calls it (one code path).

The state is an ``mjx.Data``. Per state:

    reset(key)       qpos = qpos0 + U(−c, c), qvel = U(−c, c), c = ``reset_noise_scale``
    step(d, a, xi)   ctrl = lo + (a + 1)/2 · (hi − lo) for control-limited actuators
                     (a itself for unlimited ones), then ``frame_skip`` × ``mjx.step``
                     (as ``mjx_grad.step``) in a ``lax.scan`` (xi ignored: MuJoCo is
                     deterministic)
    observe(d)       concat(qpos, qvel)
    reward           user-supplied; the builtin ``inverted_pendulum`` defaults to the
                     smooth upright reward  r = cos θ_{t+1} − 0.01 ‖a_t‖²
                     (θ the hinge angle, 0 upright), read off the transition
    done             None unless supplied (the builtin has no termination)

Gradients: each ``mjx.step`` is ``envs.mjx_grad.step``, MJX's own step whose
constraint solve keeps its value (the model's own solver settings, ``while_loop``
and all) and gets its derivative from the solve's optimality condition (implicit
function theorem; docs/mjx_gradients.md). So ``jax.grad`` and ``jax.jacfwd`` work
with any ``opt.iterations``, the trajectory is an unmodified ``mjx.step``'s, and
float32 gradients are finite where differentiating the line search overflowed
(its Newton step divides by f''(0) ~ 1e-20). ``solver_iterations`` /
``ls_iterations`` override the XML's values (None, the default, keeps them).

Precision: ``x64=True`` builds the model and data in float64 (``mjx.put_model``
and ``mjx.make_data`` follow JAX's default float, so ``jax_enable_x64`` must be
on, globally or inside ``with jax.enable_x64(True):`` around both ``make`` and
the computation). ``x64=False`` casts everything to float32, the fast choice:
on the builtin cart-pole float32 gradients agree with float64 at cosine > 0.99
(benchmarks/mjx_float32_gradients.py).
"""
from __future__ import annotations

import copy
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mbpo_grad.envs.base import Env
from mbpo_grad.envs import mjx_grad
from mbpo_grad.envs.brax_adapter import cast_floats, require_x64
from mbpo_grad.rollout import transition_reward
from mbpo_grad.validation import check_int

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
BUILTINS = {"inverted_pendulum": os.path.join(ASSETS, "inverted_pendulum.xml")}


def _upright_reward(control_cost: float = 0.01):
    """r(s, a, s') = cos θ' − c ‖a‖², θ' = qpos[1] the hinge angle of the builtin cart-pole."""

    def fn(state, action, next_state):
        return jnp.cos(next_state.qpos[1]) - control_cost * jnp.sum(jnp.square(action))

    return transition_reward(fn)


def _resolve_model(model: Any) -> tuple:
    """(name, xml path) for a builtin name or an existing XML file."""
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a builtin name or a path to a MuJoCo XML file, got {type(model).__name__}")
    model = os.fspath(model)
    if model in BUILTINS:
        return model, BUILTINS[model]
    if os.path.isfile(model):
        return os.path.splitext(os.path.basename(model))[0], model
    raise ValueError(
        f"model: {model!r} is neither a builtin MJX model ({sorted(BUILTINS)}) nor an existing MuJoCo XML file"
    )


def from_mjx(
    mj_model: Any,
    *,
    reward: Callable[..., Any],
    episode_length: int = 1000,
    observe: Optional[Callable[[Any], Any]] = None,
    done: Optional[Callable[[Any], Any]] = None,
    x64: bool = False,
    solver_iterations: Optional[int] = None,
    ls_iterations: Optional[int] = None,
    frame_skip: int = 2,
    reset_noise_scale: float = 0.01,
    name: Optional[str] = None,
) -> Env:
    """Build an ``Env`` from a ``mujoco.MjModel`` you built, stepped with MJX.

        m = mujoco.MjModel.from_xml_string(xml)
        env = envs.from_mjx(m, reward=mg.transition_reward(lambda d, a, d1: -d1.qpos[0] ** 2))

    Args:
      mj_model: a ``mujoco.MjModel`` with at least one actuator. It is not modified:
        the solver settings go on a copy (``info["mj_model"]``).
      reward: ``reward(data, action)`` or ``mg.transition_reward(fn(data, action, next_data))``
        on ``mjx.Data`` (required: a model carries no reward).
      episode_length: the time limit.
      observe: ``observe(data) -> vector``; default concat(qpos, qvel).
      done: optional ``done(data) -> bool`` (episode termination).
      x64: float64 model and data (requires ``jax_enable_x64``); else float32.
      solver_iterations: constraint-solver iterations (``opt.iterations``); None (default)
        keeps the model's value. Gradients work with any value (implicit derivative).
      ls_iterations: line-search iterations; None keeps the model's value.
      frame_skip: ``mjx.step`` calls per environment step (dt = frame_skip · timestep).
      reset_noise_scale: half-width c of the uniform start noise on qpos and qvel.
      name: the ``Env.name``; default ``mjx:model``.

    Returns:
      an ``envs.base.Env`` on ``mjx.Data`` states; ``info`` holds ``mj_model``,
      ``mjx_model``, ``dtype``, ``dt``, ``ctrl_low`` and ``ctrl_high``.

    Raises:
      TypeError for something that is not a ``mujoco.MjModel`` and for non-callable
      ``reward``/``observe``/``done``; ValueError naming the argument for a missing
      ``reward``, a model without actuators, a bad integer setting, or ``x64=True``
      without ``jax_enable_x64``.
    """
    import mujoco
    from mujoco import mjx

    if not isinstance(mj_model, mujoco.MjModel):
        raise TypeError(f"mj_model must be a mujoco.MjModel (e.g. mujoco.MjModel.from_xml_string(xml)), got "
                        f"{type(mj_model).__name__}; for a path or builtin name use envs.make('mjx:<model>')")
    episode_length = check_int(episode_length, "episode_length")
    solver_iterations = check_int(solver_iterations, "solver_iterations", allow_none=True)
    ls_iterations = check_int(ls_iterations, "ls_iterations", allow_none=True)
    frame_skip = check_int(frame_skip, "frame_skip")
    if not np.isscalar(reset_noise_scale) or not np.isfinite(reset_noise_scale) or reset_noise_scale < 0:
        raise ValueError(f"reset_noise_scale must be a finite float >= 0, got {reset_noise_scale!r}")
    if reward is None:
        raise ValueError("reward: an MJX model needs a reward, e.g. "
                         "mg.transition_reward(lambda d, a, d_next: ...) on mjx.Data")
    for arg, argname in ((reward, "reward"), (observe, "observe"), (done, "done")):
        if arg is not None and not callable(arg):
            raise TypeError(f"{argname} must be callable or None, got {arg!r}")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}")
    if mj_model.nu == 0:
        raise ValueError(f"mj_model: {name or 'the model'} has no actuators; nothing for a policy to control")
    if x64:
        require_x64("x64")
    dtype = jnp.dtype("float64" if x64 else "float32")

    mj_model = copy.deepcopy(mj_model)  # the user's model keeps its own solver settings
    if solver_iterations is not None:
        mj_model.opt.iterations = solver_iterations
    if ls_iterations is not None:
        mj_model.opt.ls_iterations = ls_iterations
    mjx_model = cast_floats(mjx.put_model(mj_model), dtype)
    data0 = cast_floats(mjx.make_data(mjx_model), dtype)

    limited = np.asarray(mj_model.actuator_ctrllimited, dtype=bool)
    ctrl_range = np.asarray(mj_model.actuator_ctrlrange, dtype=np.float64).reshape(-1, 2)
    low = np.where(limited, ctrl_range[:, 0], -1.0)
    high = np.where(limited, ctrl_range[:, 1], 1.0)  # unlimited: ctrl = a
    nq, nv, nu = mj_model.nq, mj_model.nv, mj_model.nu
    qpos0 = np.asarray(mj_model.qpos0)
    noise = float(reset_noise_scale)

    def reset(key):
        k1, k2 = jax.random.split(key)
        qpos = jnp.asarray(qpos0, dtype) + jax.random.uniform(k1, (nq,), dtype, -noise, noise)
        qvel = jax.random.uniform(k2, (nv,), dtype, -noise, noise)
        return data0.replace(qpos=qpos, qvel=qvel)

    def step(data, action, xi=None):
        del xi  # MuJoCo is deterministic
        action = jnp.reshape(jnp.asarray(action, dtype=dtype), (nu,))
        lo, hi = jnp.asarray(low, dtype), jnp.asarray(high, dtype)
        ctrl = lo + 0.5 * (action + 1.0) * (hi - lo)
        data = data.replace(ctrl=ctrl)

        def substep(d, _):
            # mjx.step's values, implicit derivative of the constraint solve. The cast
            # keeps the scan carry's dtype fixed (NumPy float64 constants in the model
            # may otherwise promote a float32 run under jax_enable_x64).
            return cast_floats(mjx_grad.step(mjx_model, d), dtype), None

        data, _ = lax.scan(substep, data, None, length=frame_skip)
        return data

    if observe is None:
        def observe(data):
            return jnp.concatenate([data.qpos, data.qvel])

    obs_shape = jax.eval_shape(lambda k: observe(reset(k)), jax.random.PRNGKey(0))
    if len(obs_shape.shape) != 1:
        raise ValueError(f"observe must return a vector, got shape {obs_shape.shape}")
    info = {
        "mj_model": mj_model,
        "mjx_model": mjx_model,
        "dtype": dtype,
        "dt": float(mj_model.opt.timestep) * frame_skip,
        "ctrl_low": low,
        "ctrl_high": high,
        "path": None,
    }
    return Env(
        name=name if name is not None else "mjx:model",
        obs_size=int(obs_shape.shape[0]),
        action_size=int(nu),
        episode_length=episode_length,
        reset=reset,
        step=step,
        reward=reward,
        observe=observe,
        done=done,
        noise_shape=(),
        info=info,
    )


def make(
    model: str = "inverted_pendulum",
    episode_length: int = 1000,
    reward: Optional[Callable[..., Any]] = None,
    observe: Optional[Callable[[Any], Any]] = None,
    done: Optional[Callable[[Any], Any]] = None,
    x64: bool = False,
    solver_iterations: Optional[int] = None,
    ls_iterations: Optional[int] = None,
    frame_skip: int = 2,
    reset_noise_scale: float = 0.01,
) -> Env:
    """``from_mjx(mujoco.MjModel.from_xml_path(path), ...)`` for a builtin name or an XML path.

    Args:
      model: a builtin name (``inverted_pendulum``) or a path to a MuJoCo XML file.
      reward: as in ``from_mjx``; optional for the builtin, which defaults to the smooth
        upright reward; required for a custom XML.
      episode_length, observe, done, x64, solver_iterations, ls_iterations, frame_skip,
      reset_noise_scale: as in ``from_mjx``.

    Returns:
      ``from_mjx``'s ``Env``, named ``mjx:<model name>``; ``info["path"]`` is the XML file.

    Raises:
      ValueError naming the argument for an unknown model or missing file, an XML that
      does not load, a custom model without ``reward``, and what ``from_mjx`` rejects;
      TypeError for a model that is neither a name nor a path.
    """
    import mujoco

    name, path = _resolve_model(model)
    if reward is None:
        if name != "inverted_pendulum" or path != BUILTINS["inverted_pendulum"]:
            raise ValueError(
                f"reward: a custom MJX model ({path}) needs a reward, e.g. "
                "mg.transition_reward(lambda d, a, d_next: ...) on mjx.Data"
            )
        reward = _upright_reward()
    try:
        mj_model = mujoco.MjModel.from_xml_path(path)
    except ValueError as err:  # MuJoCo's XML parse / compile errors
        raise ValueError(f"model: could not load MuJoCo XML {path!r}: {err}") from err
    env = from_mjx(mj_model, reward=reward, episode_length=episode_length, observe=observe, done=done, x64=x64,
                   solver_iterations=solver_iterations, ls_iterations=ls_iterations, frame_skip=frame_skip,
                   reset_noise_scale=reset_noise_scale, name=f"mjx:{name}")
    env.info["path"] = path
    return env


__all__ = ["make", "from_mjx", "BUILTINS", "ASSETS"]
