"""Differentiable environments in the engine's form (see ``envs.base.Env``).

``envs.make(name, **kw)`` builds one by name: the registered names (``registered()``:
``lqr``, ``pendulum``, ``cartpole``, ``switching_cart``, ``quantized_thruster`` and the variant
``brax:inverted_pendulum_smooth``, Brax's inverted pendulum with the smooth reward
cos θ' − 0.01‖a‖² instead of +1 while alive), then the families ``brax:<env>``
(any ``brax.envs`` name, e.g. ``brax:inverted_pendulum``, backend via ``backend=``)
and ``mjx:<path or builtin>``. Brax and MJX are imported only when asked for.

Your own systems: ``envs.from_brax(env_instance)`` wraps a Brax env instance (your own
``PipelineEnv`` subclass, or one without ``sys``), ``envs.from_mjx(mj_model, reward=...)``
a ``mujoco.MjModel``; ``envs.register(name, factory)`` makes a variant available to
``envs.make`` (and so to every config that names its env). ``envs.check_env(env)``
checks a (custom) env's functions against its declared sizes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Tuple

from mbpo_grad.envs.base import Env, check_env


def _require(module: str, extra: str) -> None:
    """A clear ImportError when an optional simulator is not installed (``pip install 'mbpo_grad[extra]'``)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{module} is not installed: pip install -e '.[{extra}]' (or '.[all]') for the "
                          f"{'Brax' if extra == 'brax' else 'MuJoCo MJX'} environments")

ANALYTIC = ("lqr", "pendulum", "cartpole", "switching_cart", "quantized_thruster")
_MODULES = {"quantized_thruster": "quantized"}   # an analytic name whose module has another name
FAMILIES = ("brax:", "mjx:")

_REGISTRY: Dict[str, Callable[..., Env]] = {}


def register(name: str, factory: Callable[..., Env], *, overwrite: bool = False) -> None:
    """Make ``envs.make(name, **kw)`` return ``factory(**kw)``.

    A registered name is looked up before the ``brax:``/``mjx:`` families, so a variant may
    live in their namespace (``brax:inverted_pendulum_smooth``). Registering a taken name
    raises unless ``overwrite=True``.
    """
    if not isinstance(name, str) or not name or name in FAMILIES:
        raise ValueError(f"name must be a non-empty str other than {FAMILIES}, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable (factory(**kwargs) -> Env), got {factory!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"name: {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = factory


def registered() -> Tuple[str, ...]:
    """The registered names, sorted (the ``brax:``/``mjx:`` families come on top of these)."""
    return tuple(sorted(_REGISTRY))


def make(name: str, **kwargs) -> Env:
    """The env called ``name`` (a registered name, ``brax:<env>`` or ``mjx:<model>``), built with ``kwargs``."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name in _REGISTRY:
        return _REGISTRY[name](**kwargs)
    if name.startswith("brax:"):
        _require("brax", "brax")
        from mbpo_grad.envs import brax_adapter
        return brax_adapter.make(name.split(":", 1)[1], **kwargs)
    if name.startswith("mjx:"):
        _require("mujoco", "mjx")
        from mbpo_grad.envs import mjx_adapter
        return mjx_adapter.make(name.split(":", 1)[1], **kwargs)
    raise ValueError(
        f"name: unknown environment {name!r}; expected one of {list(registered())} or 'brax:<env>' or 'mjx:<model>'"
    )


def from_brax(env_instance: Any, **kwargs) -> Env:
    """``envs.brax_adapter.from_brax``: an ``Env`` from a Brax env instance (see its docstring)."""
    _require("brax", "brax")
    from mbpo_grad.envs import brax_adapter
    return brax_adapter.from_brax(env_instance, **kwargs)


def from_mjx(mj_model: Any, **kwargs) -> Env:
    """``envs.mjx_adapter.from_mjx``: an ``Env`` from a ``mujoco.MjModel`` (see its docstring)."""
    _require("mujoco", "mjx")
    from mbpo_grad.envs import mjx_adapter
    return mjx_adapter.from_mjx(mj_model, **kwargs)


# --------------------------------------------------------------------------- built-in names
def _module_factory(module: str) -> Callable[..., Env]:
    def factory(**kwargs) -> Env:
        import importlib
        return importlib.import_module(f"mbpo_grad.envs.{module}").make(**kwargs)
    return factory


def _brax_inverted_pendulum_smooth(**kwargs) -> Env:
    """Brax ``inverted_pendulum`` with ``brax_adapter.upright_reward()``: r = cos θ' − 0.01‖a‖²
    (its termination at |θ| > 0.2 and everything else as ``brax:inverted_pendulum``)."""
    from mbpo_grad.envs import brax_adapter
    if "reward" in kwargs:
        raise ValueError("reward: brax:inverted_pendulum_smooth defines its reward; for another one use "
                         "envs.make('brax:inverted_pendulum', reward=...)")
    env = brax_adapter.make("inverted_pendulum", reward=brax_adapter.upright_reward(), **kwargs)
    return dataclasses.replace(env, name="brax:inverted_pendulum_smooth")


for _name in ANALYTIC:
    register(_name, _module_factory(_MODULES.get(_name, _name)))
register("brax:inverted_pendulum_smooth", _brax_inverted_pendulum_smooth)
del _name


__all__ = ["Env", "make", "register", "registered", "from_brax", "from_mjx", "check_env", "ANALYTIC"]
