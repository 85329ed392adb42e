"""Shared fixtures: which backend the conformance suite runs on.

nox runs the whole suite once per backend, each in its own environment, with
``D2LX_BACKEND`` set. Run by hand without it, the suite uses torch if it is
installed and otherwise skips the conformance tests with a reason.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for `import oracle`

import d2lx
from d2lx import registry


def selected_backend() -> str | None:
    env = os.environ.get(registry.BACKEND_ENV_VAR)
    if env:
        return registry.canonical_name(env)
    return "torch" if registry.is_installed("torch") else None


@pytest.fixture(scope="session")
def backend_name() -> str:
    name = selected_backend()
    if name is None:
        pytest.skip("no backend selected ($D2LX_BACKEND unset) and torch is not installed")
    return name


@pytest.fixture(scope="session")
def d2l(backend_name: str):  # type: ignore[no-untyped-def]
    """The backend namespace, as `from d2lx import <backend> as d2l` gives it."""
    return registry.load(backend_name)


@pytest.fixture(autouse=True)
def _reset_global_state():  # type: ignore[no-untyped-def]
    """Each test starts from the documented defaults (seed 0, no use_backend)."""
    previous = registry._active
    d2lx.seed(0)
    yield
    registry._active = previous
    d2lx.seed(0)


def gpu_count(d2l) -> int:  # type: ignore[no-untyped-def]
    return sum(1 for d in d2l.list_devices() if d.startswith("gpu"))
