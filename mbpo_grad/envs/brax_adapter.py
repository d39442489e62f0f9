"""Any Brax environment in the engine's form (``envs.base.Env``): by name or a user's own instance.

    env = envs.make("brax:inverted_pendulum", backend="generalized")   # a brax.envs name
    env = envs.from_brax(MyPendulum(backend="generalized"))             # your own brax Env instance
    J = mg.pathwise_objective(policy, params, env.step, env.reward, states,
                              horizon=32, done=env.done)

``make(name, backend=..., **kw)`` is ``from_brax(brax.envs.get_environment(name,
backend=backend, **kw), ...)``: one code path. ``from_brax`` takes any
``brax.envs.Env`` instance: a ``PipelineEnv`` (a Brax task, or one you wrote or
subclassed) or an env with no ``sys`` at all, such as Brax's unit-test env
``brax.envs.fast.Fast``. The state is Brax's own ``brax.envs.State``; pass the env
without Brax's training wrappers (``EpisodeWrapper``, ``AutoResetWrapper``,
``VmapWrapper``: the engine handles the time limit and termination, and vmaps
itself). Per state:

    reset(key)            = brax_env.reset(key)
    step(s, a, xi)        = brax_env.step(s, a)          (xi ignored: Brax is deterministic)
    reward                = transition_reward(s, a, s' -> s'.reward) by default, so the
                            engine reads the reward Brax computed in ``step`` without
                            stepping twice; or a user-supplied smooth reward
    done(s)               = s.done                       (Brax's termination flag)
    observe(s)            = s.obs                        (must be a flat vector)

Actions are in [-1, 1]^action_size; Brax's environments scale them to their
actuator ranges themselves.

Backends: ``generalized``, ``positional`` and ``spring`` differentiate as they
are. ``mjx`` runs MuJoCo's constraint solver, whose ``lax.while_loop`` reverse
mode cannot differentiate and whose line search overflows float32 cotangents; for
that backend the stepped copy's pipeline is Brax's own ``brax.mjx.pipeline``
(``init`` as it is, ``step`` its code object unmodified) with ``mjx.step`` resolved
to ``envs.mjx_grad.step``: MJX's step with the model's own solver settings, whose
constraint solve gets its derivative from the optimality condition (implicit
function theorem, docs/mjx_gradients.md). Values are Brax's; ``jax.grad`` works
with any ``opt.iterations``. ``solver_iterations`` (``mjx`` backend only) overrides
``sys.opt.iterations``; None (the default) keeps the model's value.

Precision: ``x64=True`` runs the simulation in float64: the Brax system, the
start state and every state ``step`` returns are cast to float64 (needs
``jax_enable_x64``, e.g. ``with jax.enable_x64(True):`` around both ``make`` and
the computation). ``x64=False`` keeps everything float32 even when
``jax_enable_x64`` is on: Brax creates arrays without a dtype (e.g.
``jp.zeros(sys.qd_size())`` in ``brax.actuator.to_tau``), which follow JAX's
default float, float64 under ``jax_enable_x64``, and turn the float32 carry of
Brax's own ``n_frames`` scan into float64 (a scan type error). So a float32 env
traces Brax's ``reset`` and ``step`` under ``jax.enable_x64(False)`` (a trace-time
setting: it works under ``jit``, ``grad``, ``vmap`` and ``scan``), and its
numbers are the same whether ``jax_enable_x64`` is on or off. Gradients through
contacts and joint limits can be non-finite in float32 (mbpo_grad's reliability
layer masks those); float64 is the remedy.

Envs without ``sys`` (``Fast``, or any ``brax.envs.Env`` that is not a
``PipelineEnv``): there is no system to cast or solver to configure, so those
steps are skipped; the start state and every stepped state are still cast to the
chosen float type, and ``info["dt"]`` is None when the env has no ``dt``.

The user's instance is never modified: the adapter sets the cast ``sys`` on a
shallow copy (``info["brax_env"]``).

Note on Brax's reward: many Brax tasks pay a constant per step while alive
(``inverted_pendulum`` pays +1 until |pole angle| > 0.2, when ``done`` turns 1),
so the pathwise gradient of the default reward is zero apart from the
termination boundary; pass a smooth ``reward`` (of the state) for a useful
gradient, or use the registered variant ``envs.make("brax:inverted_pendulum_smooth")``
(``upright_reward``: cos θ' − 0.01‖a‖²).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import types
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mbpo_grad.envs.base import Env
from mbpo_grad.rollout import transition_reward
from mbpo_grad.validation import check_int

BACKENDS = ("generalized", "positional", "spring", "mjx")
# Brax's training wrappers: they batch, time-limit or auto-reset, which the engine does itself.
_TRAINING_WRAPPERS = ("VmapWrapper", "EpisodeWrapper", "AutoResetWrapper", "EvalWrapper",
                      "DomainRandomizationVmapWrapper")


def available_envs() -> tuple:
    """The names ``brax.envs`` knows (including ones added by ``register_environment``)."""
    from brax import envs as brax_envs

    registry = getattr(brax_envs, "_envs", None)
    if registry is None:  # pragma: no cover - a future Brax without the private registry
        return ()
    return tuple(sorted(registry))


def require_x64(name: str = "x64") -> None:
    """Raise unless ``jax_enable_x64`` is on (globally or in a ``jax.enable_x64`` context)."""
    if jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.dtype("float64"):
        raise ValueError(
            f"{name}=True needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) "
            "at start-up, or build and run the environment inside `with jax.enable_x64(True):`"
        )


def cast_floats(tree: Any, dtype) -> Any:
    """Cast every floating leaf of ``tree`` (arrays and Python floats) to ``dtype``; keep the rest.

    Casting is differentiable (convert_element_type), so gradients pass through.
    It also strips weak types, so a ``lax.scan`` carry keeps one exact type.
    """
    dtype = jnp.dtype(dtype)

    def cast(leaf):
        if isinstance(leaf, float):
            return jnp.asarray(leaf, dtype=dtype)
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic)) and jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.asarray(leaf, dtype=dtype)
        return leaf

    return jax.tree_util.tree_map(cast, tree)


def default_float_context(dtype) -> contextlib.AbstractContextManager:
    """``jax.enable_x64(False)`` for float32 (arrays created without a dtype become float32
    even under ``jax_enable_x64``); a no-op context for float64."""
    return jax.enable_x64(False) if jnp.dtype(dtype) == jnp.float32 else contextlib.nullcontext()


def upright_reward(control_cost: float = 0.01):
    """r(s, a, s') = cos θ' − c ‖a‖² with θ' = s'.obs[1] (Brax ``inverted_pendulum``'s pole angle,
    0 upright), a transition reward: the smooth reward of ``brax:inverted_pendulum_smooth``.

    Brax's own reward is +1 while |θ| <= 0.2, whose pathwise gradient is zero; cos θ' rewards
    being upright smoothly (the same form as ``mjx:inverted_pendulum``'s default reward).
    """
    control_cost = float(control_cost)

    def fn(state, action, next_state):
        return jnp.cos(next_state.obs[1]) - control_cost * jnp.sum(jnp.square(action))

    return transition_reward(fn)


def _check_settings(episode_length: Any, reward: Any, x64: bool, solver_iterations: Any) -> tuple:
    """(episode_length, solver_iterations, dtype) after validation; shared by ``make`` and ``from_brax``."""
    episode_length = check_int(episode_length, "episode_length")
    solver_iterations = check_int(solver_iterations, "solver_iterations", allow_none=True)
    if reward is not None and not callable(reward):
        raise TypeError(f"reward must be callable (reward(state, action) or mg.transition_reward(fn)), got {reward!r}")
    if x64:
        require_x64("x64")
    return episode_length, solver_iterations, jnp.dtype("float64" if x64 else "float32")


def _optional_attr(obj: Any, name: str) -> Any:
    """``obj.name``, or None where the env has no such attribute (``Fast`` has no ``sys``, ``dt``
    or ``backend``: its properties raise AttributeError)."""
    try:
        return getattr(obj, name)
    except AttributeError:
        return None


def _replace_sys(env: Any, sys: Any, pipeline: Any = None) -> Any:
    """A shallow copy of ``env`` (and of the wrappers around it) whose innermost env has ``sys``
    (and, if given, ``_pipeline``: the module-like object ``PipelineEnv.pipeline_step`` calls)."""
    from brax.envs.base import Wrapper

    new = copy.copy(env)
    if isinstance(env, Wrapper):
        new.env = _replace_sys(env.env, sys, pipeline)
    else:
        new.sys = sys
        if pipeline is not None:
            new._pipeline = pipeline
    return new


@functools.lru_cache(maxsize=None)
def mjx_grad_pipeline() -> Any:
    """Brax's ``mjx`` pipeline with implicit-function derivatives of MuJoCo's constraint solve.

    ``init`` is ``brax.mjx.pipeline.init``; ``step`` is ``brax.mjx.pipeline.step``'s code
    object, unmodified, run with the module-level name ``mjx`` bound to a namespace whose
    ``step`` is ``envs.mjx_grad.step`` (everything else: ``mujoco.mjx``'s attributes). So a
    step's values are Brax's and MJX's; only the solve's derivative differs.
    """
    from brax.mjx import pipeline as m_pipeline
    from mujoco import mjx

    from mbpo_grad.envs import mjx_grad

    inner = getattr(m_pipeline.step, "__wrapped__", m_pipeline.step)
    if not isinstance(inner, types.FunctionType) or "mjx" not in inner.__code__.co_names:
        raise RuntimeError("brax.mjx.pipeline.step no longer calls mjx.step; the mjx backend's gradient "
                           "route (envs.mjx_grad) supports Brax 0.14's layout")
    shim = types.SimpleNamespace(**{k: getattr(mjx, k) for k in dir(mjx) if not k.startswith("__")})
    shim.step = mjx_grad.step
    env = dict(m_pipeline.__dict__)
    env["mjx"] = shim
    step = types.FunctionType(inner.__code__, env, inner.__name__, inner.__defaults__, inner.__closure__)
    return types.SimpleNamespace(init=m_pipeline.init, step=step)


def from_brax(
    env_instance: Any,
    *,
    episode_length: int = 1000,
    reward: Optional[Callable[..., Any]] = None,
    x64: bool = False,
    solver_iterations: Optional[int] = None,
    name: Optional[str] = None,
) -> Env:
    """Wrap a ``brax.envs.Env`` instance (e.g. your own ``PipelineEnv`` subclass) as an ``Env``.

    Args:
      env_instance: a ``brax.envs.Env``: a Brax task, one you wrote or subclassed, or
        one with no ``sys`` (e.g. ``brax.envs.fast.Fast``). Not wrapped in Brax's
        training wrappers. It is not modified (the cast ``sys`` goes on a copy).
      episode_length: the time limit (Brax's default 1000).
      reward: None for Brax's own reward (read off the transition), or
        ``reward(state, action)`` / ``mg.transition_reward(fn(state, action, next_state))``
        on Brax ``State`` objects (e.g. a smooth function of ``state.obs``).
      x64: run the simulation in float64 (requires ``jax_enable_x64``).
      solver_iterations: ``mjx`` backend only: MuJoCo constraint-solver iterations
        (``opt.iterations``); None (default) keeps the model's value. Gradients work with
        any value (the solve's implicit derivative, ``envs.mjx_grad``).
      name: the ``Env.name``; default ``brax:<class name>``.

    Returns:
      an ``envs.base.Env`` whose states are Brax ``State`` objects; ``info`` holds
      ``brax_env`` (the copy that is stepped), ``backend`` (None without one),
      ``dtype``, ``dt`` (None without one) and ``has_sys``.

    Raises:
      TypeError for something that is not a ``brax.envs.Env`` or a non-callable
      ``reward``; ValueError naming the argument for an env inside Brax's training
      wrappers, a non-vector observation, a non-positive ``episode_length`` or
      ``solver_iterations``, or ``x64=True`` without ``jax_enable_x64``.
    """
    from brax.envs.base import Env as BraxEnv, Wrapper

    if not isinstance(env_instance, BraxEnv):
        raise TypeError(f"env_instance must be a brax.envs.Env instance (e.g. a PipelineEnv), got "
                        f"{type(env_instance).__name__}; for a name use envs.make('brax:<env>')")
    layer = env_instance
    while isinstance(layer, Wrapper):
        if type(layer).__name__ in _TRAINING_WRAPPERS:
            raise ValueError(
                f"env_instance: is wrapped in Brax's {type(layer).__name__}; pass the env without the "
                "training wrappers (e.g. env.unwrapped or brax.envs.get_environment(...)): the engine "
                "handles time limits and termination and vmaps itself")
        layer = layer.env
    episode_length, solver_iterations, dtype = _check_settings(episode_length, reward, x64, solver_iterations)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}")

    backend = _optional_attr(env_instance, "backend")
    sys = _optional_attr(env_instance, "sys")
    brax_env = env_instance
    if sys is not None:  # no sys (e.g. Fast): nothing to configure or cast but the states
        pipeline = None
        if backend == "mjx":
            if solver_iterations is not None:
                sys = sys.replace(opt=sys.opt.replace(iterations=solver_iterations))
            pipeline = mjx_grad_pipeline()
        brax_env = _replace_sys(env_instance, cast_floats(sys, dtype), pipeline)

    def reset(key):
        with default_float_context(dtype):
            return cast_floats(brax_env.reset(key), dtype)

    def step(state, action, xi=None):
        del xi  # Brax dynamics are deterministic
        action = jnp.asarray(action, dtype=dtype)
        with default_float_context(dtype):
            # Cast back: the carry of the engine's scan must keep one dtype even when
            # a Brax env returns Python floats (e.g. reward=1.0) or mixes precisions.
            return cast_floats(brax_env.step(state, action), dtype)

    if reward is None:
        reward = transition_reward(lambda s, a, s_next: s_next.reward)

    def done(state):
        return state.done

    def observe(state):
        return state.obs

    obs_shape = jax.eval_shape(reset, jax.random.PRNGKey(0)).obs
    if not hasattr(obs_shape, "shape") or len(obs_shape.shape) != 1:
        raise ValueError(f"env_instance: {type(env_instance).__name__} has a non-vector observation "
                         f"{obs_shape}; the adapter needs a flat obs vector")
    dt = _optional_attr(brax_env, "dt")
    info = {"brax_env": brax_env, "backend": backend, "dtype": dtype,
            "dt": None if dt is None else float(dt), "has_sys": sys is not None}
    return Env(
        name=name if name is not None else f"brax:{type(layer).__name__}",
        obs_size=int(obs_shape.shape[0]),
        action_size=int(brax_env.action_size),
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
    env_name: str,
    backend: str = "generalized",
    episode_length: int = 1000,
    reward: Optional[Callable[..., Any]] = None,
    x64: bool = False,
    solver_iterations: Optional[int] = None,
    **env_kwargs,
) -> Env:
    """``from_brax(brax.envs.get_environment(env_name, backend=backend, **env_kwargs), ...)``.

    Args:
      env_name: a ``brax.envs`` name, e.g. ``inverted_pendulum``, ``halfcheetah``, ``ant``.
      backend: one of ``generalized``, ``positional``, ``spring``, ``mjx``.
      episode_length, reward, x64, solver_iterations: as in ``from_brax``.
      **env_kwargs: passed to the Brax environment's constructor (e.g. ``n_frames``).

    Returns:
      ``from_brax``'s ``Env``, named ``brax:<env_name>``.

    Raises:
      ValueError naming the argument for an unknown ``env_name`` or ``backend`` and for
      the settings ``from_brax`` rejects (checked before the Brax env is built).
    """
    if not isinstance(env_name, str):
        raise TypeError(f"env_name must be a str (a brax.envs name), got {type(env_name).__name__}")
    names = available_envs()
    if env_name not in names:
        raise ValueError(f"env_name: unknown Brax environment {env_name!r}; expected one of {list(names)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown Brax backend {backend!r}; expected one of {list(BACKENDS)}")
    _check_settings(episode_length, reward, x64, solver_iterations)  # fail before building the env

    from brax import envs as brax_envs

    return from_brax(brax_envs.get_environment(env_name, backend=backend, **env_kwargs),
                     episode_length=episode_length, reward=reward, x64=x64,
                     solver_iterations=solver_iterations, name=f"brax:{env_name}")


__all__ = ["make", "from_brax", "upright_reward", "BACKENDS", "available_envs", "cast_floats",
           "default_float_context", "require_x64", "mjx_grad_pipeline"]
