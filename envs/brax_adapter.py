"""Any ``brax.envs`` environment in the engine's form (``envs.base.Env``).

    env = envs.make("brax:inverted_pendulum", backend="generalized")
    J = mg.pathwise_objective(policy, params, env.step, env.reward, states,
                              horizon=32, done=env.done)

The state is Brax's own ``brax.envs.State`` (no auto-reset, episode or training
wrappers: the engine handles the time limit and termination). Per state:

    reset(key)            = brax_env.reset(key)
    step(s, a, xi)        = brax_env.step(s, a)          (xi ignored: Brax is deterministic)
    reward                = transition_reward(s, a, s' -> s'.reward) by default, so the
                            engine reads the reward Brax computed in ``step`` without
                            stepping twice; or a user-supplied smooth reward
    done(s)               = s.done                       (Brax's termination flag)
    observe(s)            = s.obs

Actions are in [-1, 1]^action_size; Brax's environments scale them to their
actuator ranges themselves.

Backends: ``generalized``, ``positional`` and ``spring`` differentiate as they
are. ``mjx`` runs MuJoCo's constraint solver, whose outer loop is a
``lax.while_loop`` that reverse mode cannot differentiate unless it runs a
single iteration; ``solver_iterations=1`` (the default here, applied only to the
``mjx`` backend) sets ``sys.opt.iterations`` so that ``jax.grad`` works (the line
search is a fixed-length scan and differentiates as it is). Pass
``solver_iterations=None`` to keep the model's own value (forward simulation
only).

Precision: ``x64=True`` runs the simulation in float64: the Brax system, the
start state and every state ``step`` returns are cast to float64 (needs
``jax_enable_x64``, e.g. ``with jax.enable_x64(True):`` around both ``make`` and
the computation). ``x64=False`` keeps everything float32 even when
``jax_enable_x64`` is on. Gradients through contacts and joint limits can be
non-finite in float32 (mbpo_grad's reliability layer masks those); float64 is
the remedy.

Note on Brax's reward: many Brax tasks pay a constant per step while alive
(``inverted_pendulum`` pays +1 until |pole angle| > 0.2, when ``done`` turns 1),
so the pathwise gradient of the default reward is zero apart from the
termination boundary; pass a smooth ``reward`` (of the state) for a useful
gradient.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from envs.base import Env
from mbpo_grad.rollout import transition_reward

BACKENDS = ("generalized", "positional", "spring", "mjx")


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


def _check_positive_int(value: Any, name: str, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a positive int{extra}, got {value!r}")
    return int(value)


def make(
    env_name: str,
    backend: str = "generalized",
    episode_length: int = 1000,
    reward: Optional[Callable[..., Any]] = None,
    x64: bool = False,
    solver_iterations: Optional[int] = 1,
    **env_kwargs,
) -> Env:
    """Wrap ``brax.envs.get_environment(env_name, backend=backend, **env_kwargs)``.

    Args:
      env_name: a ``brax.envs`` name, e.g. ``inverted_pendulum``, ``halfcheetah``, ``ant``.
      backend: one of ``generalized``, ``positional``, ``spring``, ``mjx``.
      episode_length: the time limit (Brax's default 1000).
      reward: None for Brax's own reward (read off the transition), or
        ``reward(state, action)`` / ``mg.transition_reward(fn(state, action, next_state))``
        on Brax ``State`` objects (e.g. a smooth function of ``state.obs``).
      x64: run the simulation in float64 (requires ``jax_enable_x64``).
      solver_iterations: ``mjx`` backend only: MuJoCo constraint-solver iterations
        (1 makes reverse mode work; None keeps the model's value).
      **env_kwargs: passed to the Brax environment's constructor (e.g. ``n_frames``).

    Returns:
      an ``envs.base.Env`` whose states are Brax ``State`` objects; ``info`` holds
      ``brax_env`` (the underlying environment), ``backend``, ``dtype`` and ``dt``.

    Raises:
      ValueError naming the argument for an unknown ``env_name`` or ``backend``, a
      non-positive ``episode_length`` or ``solver_iterations``, or ``x64=True``
      without ``jax_enable_x64``.
    """
    if not isinstance(env_name, str):
        raise TypeError(f"env_name must be a str (a brax.envs name), got {type(env_name).__name__}")
    names = available_envs()
    if env_name not in names:
        raise ValueError(f"env_name: unknown Brax environment {env_name!r}; expected one of {list(names)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown Brax backend {backend!r}; expected one of {list(BACKENDS)}")
    episode_length = _check_positive_int(episode_length, "episode_length")
    solver_iterations = _check_positive_int(solver_iterations, "solver_iterations", allow_none=True)
    if reward is not None and not callable(reward):
        raise TypeError(f"reward must be callable (reward(state, action) or mg.transition_reward(fn)), got {reward!r}")
    if x64:
        require_x64("x64")
    dtype = jnp.dtype("float64" if x64 else "float32")

    from brax import envs as brax_envs

    brax_env = brax_envs.get_environment(env_name, backend=backend, **env_kwargs)
    sys = brax_env.sys
    if backend == "mjx" and solver_iterations is not None:
        sys = sys.replace(opt=sys.opt.replace(iterations=solver_iterations))
    brax_env.sys = cast_floats(sys, dtype)

    def reset(key):
        return cast_floats(brax_env.reset(key), dtype)

    def step(state, action, xi=None):
        del xi  # Brax dynamics are deterministic
        action = jnp.asarray(action, dtype=dtype)
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
        raise ValueError(
            f"env_name: {env_name!r} has a non-vector observation {obs_shape}; the adapter needs a flat obs vector"
        )
    info = {"brax_env": brax_env, "backend": backend, "dtype": dtype, "dt": float(brax_env.dt)}
    return Env(
        name=f"brax:{env_name}",
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


__all__ = ["make", "BACKENDS", "available_envs", "cast_floats", "require_x64"]
