"""Differentiable environments in the engine's form (see ``envs.base.Env``).

``envs.make(name, **kw)`` builds one by name: ``lqr``, ``pendulum``, ``cartpole``,
``switching_cart``, ``brax:<env>`` (e.g. ``brax:inverted_pendulum``, backend via ``backend=``) and
``mjx:<path or builtin>``. Brax and MJX are imported only when asked for.
``envs.check_env(env)`` checks a (custom) env's functions against its declared sizes.
"""
from __future__ import annotations

from envs.base import Env, check_env

ANALYTIC = ("lqr", "pendulum", "cartpole", "switching_cart")


def make(name: str, **kwargs) -> Env:
    if name == "pendulum":
        from envs import pendulum
        return pendulum.make(**kwargs)
    if name == "cartpole":
        from envs import cartpole
        return cartpole.make(**kwargs)
    if name == "lqr":
        from envs import lqr
        return lqr.make(**kwargs)
    if name == "switching_cart":
        from envs import switching_cart
        return switching_cart.make(**kwargs)
    if name.startswith("brax:"):
        from envs import brax_adapter
        return brax_adapter.make(name.split(":", 1)[1], **kwargs)
    if name.startswith("mjx:"):
        from envs import mjx_adapter
        return mjx_adapter.make(name.split(":", 1)[1], **kwargs)
    raise ValueError(
        f"name: unknown environment {name!r}; expected one of {ANALYTIC} or 'brax:<env>' or 'mjx:<model>'"
    )


__all__ = ["Env", "make", "check_env", "ANALYTIC"]
