"""Test-suite switches: ``heavy`` tests run only with MBPO_GRAD_HEAVY=1 (see pyproject's markers);
XLA's low-effort CPU code generation for the whole suite (and the subprocesses it starts).

The suite is compile-bound (hundreds of small programs, most run a few times), so
``experiments.rundir.cpu_fast_compile`` (``--xla_backend_optimization_level=0``, no expensive
LLVM passes) takes about a fifth off its time on 2 cores (measured on 53 Brax / MJX / agent
tests: 210 s → 163 s; the whole suite 17:16 (working checkout) → 14:19 (clean clone); learning
runs execute slower, e.g. SHAC's cart-pole swing-up 40 → 62 s). No fast-math either way, but the
generated code differs in the last bits where XLA fuses or approximates differently (float32 tanh(12) is 0.99999982 instead of 1.0; a trajectory
of two differently rematerialised programs agrees to a few roundings, not bit for bit): the
tests assert float tolerances, not bit-equality between different programs. A GPU plugin, a
user's own flag or MBPO_GRAD_TEST_FULL_OPT=1 leaves XLA's default.
"""
import os

import pytest

if os.environ.get("MBPO_GRAD_TEST_FULL_OPT") != "1":
    from experiments.rundir import cpu_fast_compile

    cpu_fast_compile()


def pytest_collection_modifyitems(config, items):
    if os.environ.get("MBPO_GRAD_HEAVY") == "1":
        return
    skip = pytest.mark.skip(reason="heavy: set MBPO_GRAD_HEAVY=1 to run (minutes on 2 cores)")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)
