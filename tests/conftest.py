"""Test-suite switches: ``heavy`` tests run only with MBPO_GRAD_HEAVY=1 (see pyproject's markers)."""
import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.environ.get("MBPO_GRAD_HEAVY") == "1":
        return
    skip = pytest.mark.skip(reason="heavy: set MBPO_GRAD_HEAVY=1 to run (minutes on 2 cores)")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)
