"""Agent configs declared once: static settings and traced float hyper-parameters in one dataclass.

    @hyperparams.derive
    @dataclasses.dataclass(frozen=True)
    class MyConfig(hyperparams.Config):
        horizon: int = 32                    # static: shapes, loop lengths (changing it recompiles)
        actor_lr: float = traced(1e-2)       # traced: an array in HParams (vmap over it, no recompile)

    HParams = MyConfig.HPARAMS               # NamedTuple(actor_lr) derived from the marked fields
    hp = MyConfig().hparams(actor_lr=3e-3)   # HParams of float32 arrays

A field marked ``traced`` is declared once, with its default, in the config; ``derive`` builds the
``HParams`` NamedTuple (a pytree of arrays, the traced argument of ``init`` / ``update``) from the
marked fields in declaration order, and ``Config.hparams`` fills it from the config. Why not a
library: this is the split ``mg.sweep`` relies on (PureJaxRL keeps one config dict; Brax passes
the floats as keyword arguments), and a dozen lines over ``dataclasses`` say it exactly.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple, Tuple

import jax
import jax.numpy as jnp


def traced(default: float) -> Any:
    """A float config field that becomes a traced array of the agent's ``HParams``."""
    return dataclasses.field(default=default, metadata={"traced": True})


def traced_fields(cls) -> Tuple[str, ...]:
    """The names of the ``traced`` fields of a config dataclass, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("traced"))


def derive(cls):
    """Class decorator (after ``@dataclass``): set ``cls.HPARAMS`` to the NamedTuple of its traced fields."""
    names = traced_fields(cls)
    if not names:
        raise TypeError(f"{cls.__name__}: no field is marked traced(...)")
    hp = NamedTuple("HParams", [(n, jax.Array) for n in names])
    hp.__module__ = cls.__module__
    hp.__doc__ = (f"Traced float hyper-parameters of ``{cls.__name__}`` (arrays; vmappable without "
                  f"recompiling): {', '.join(names)}. Built by ``{cls.__name__}().hparams()``.")
    cls.HPARAMS = hp
    return cls


class Config:
    """Mixin of agent configs: ``hparams()`` and ``replace()`` (see the module docstring)."""

    HPARAMS: ClassVar[Any] = None

    def hparams(self, **overrides):
        """The traced hyper-parameters as float32 arrays; ``overrides`` replace config values."""
        cls = type(self).HPARAMS
        vals = {f: overrides.pop(f, getattr(self, f)) for f in cls._fields}
        if overrides:
            raise TypeError(f"hparams: unknown hyper-parameter(s) {sorted(overrides)}; expected {cls._fields}")
        return cls(**{k: jnp.asarray(v, jnp.float32) for k, v in vals.items()})

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)

    def checked_hparams(self, hparams, check):
        """``hparams`` (default ``self.hparams()``), of this config's ``HParams`` type, value-checked by ``check``."""
        hparams = self.hparams() if hparams is None else hparams
        cls = type(self).HPARAMS
        if not isinstance(hparams, cls):
            raise TypeError(f"hparams must be the HParams of {type(self).__name__} (config.hparams()), "
                            f"got {type(hparams).__name__}")
        check(hparams)
        return hparams


__all__ = ["traced", "traced_fields", "derive", "Config"]
