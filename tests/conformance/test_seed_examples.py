"""Conformance: the d2l seed examples run with only their import lines changed.

Each entry below is the example code of ``shared/seeds`` for one backend, with
the ``from d2l import ...`` line replaced by the d2lx one, exactly as a reader
of d2l would change it. The printed error lines are parsed and checked against
the bounds the seeds' own printed results fall within.
"""

from __future__ import annotations

import contextlib
import io
import re

import numpy as np
import pytest

SCRATCH_BOUND, CONCISE_BOUND = 0.5, 0.05

# backend -> list of (name, code, bound). Adding a backend adds its entries here.
EXAMPLES: dict[str, list[tuple[str, str, float]]] = {
    "torch": [
        (
            "3.4 scratch (001)",
            """
from d2lx import torch as d2l
import torch

model = d2l.LinearRegressionScratch(2, lr=0.03)
data = d2l.SyntheticRegressionData(w=torch.tensor([2, -3.4]), b=4.2)
trainer = d2l.Trainer(max_epochs=3)
trainer.fit(model, data)
with torch.no_grad():
    print(f'error in estimating w: {data.w - model.w.reshape(data.w.shape).numpy()}')
    print(f'error in estimating b: {data.b - model.b.numpy()}')
""",
            SCRATCH_BOUND,
        ),
        (
            "3.5 concise (002)",
            """
import numpy as np
import torch
from torch import nn
from d2lx import torch as d2l

model = d2l.LinearRegression(lr=0.03)
data = d2l.SyntheticRegressionData(w=torch.tensor([2, -3.4]), b=4.2)
trainer = d2l.Trainer(max_epochs=3)
trainer.fit(model, data)
w, b = model.get_w_b()
print(f'error in estimating w: {data.w - w.reshape(data.w.shape)}')
print(f'error in estimating b: {data.b - b}')
""",
            CONCISE_BOUND,
        ),
    ],
}

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _errors(line: str) -> np.ndarray:
    body = line.split(":", 1)[1]
    body = body.split("shape=")[0]  # tf.Tensor([...], shape=..., dtype=...)
    return np.array([float(x) for x in re.findall(_NUMBER, body)])


def _cases(backend: str) -> list[tuple[str, str, float]]:
    return EXAMPLES.get(backend, [])


def test_every_backend_has_seed_examples(backend_name: str) -> None:
    assert _cases(backend_name), f"no seed example registered for {backend_name}"


@pytest.mark.parametrize("index", [0, 1])
def test_seed_example_prints_its_two_error_lines(backend_name: str, index: int, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cases = _cases(backend_name)
    if index >= len(cases):
        pytest.skip(f"{backend_name} has {len(cases)} seed example(s)")
    name, code, bound = cases[index]
    monkeypatch.setenv("CI", "1")  # no progress bar in captured output
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"<seed example {name}>", "exec"), {"__name__": "__seed__"})
    lines = [line for line in out.getvalue().splitlines() if line.startswith("error in estimating")]
    heads = [line.split(":")[0] for line in lines]
    assert heads == ["error in estimating w", "error in estimating b"], out.getvalue()
    w_err, b_err = _errors(lines[0]), _errors(lines[1])
    assert w_err.shape == (2,) and b_err.shape == (1,)
    assert np.all(np.abs(w_err) < bound) and np.all(np.abs(b_err) < bound), out.getvalue()
