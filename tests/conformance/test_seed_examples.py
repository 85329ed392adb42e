"""Conformance: the d2l seed examples run with only their import lines changed.

Each file ``tests/seed_examples/<backend>_*.py`` is the example code of
``shared/seeds`` for one backend with the ``from d2l import ...`` line
replaced by the d2lx one, exactly as a reader of d2l would change it. A
``# bound: X`` comment gives the error bound the seed's own printed result
falls within. The printed error lines are parsed and checked against it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).parent.parent / "seed_examples"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _errors(line: str) -> np.ndarray:
    body = line.split(":", 1)[1].split("shape=")[0]  # also tf.Tensor([...], shape=..., dtype=...)
    body = re.sub(r"dtype\S*", "", body)
    return np.array([float(x) for x in re.findall(_NUMBER, body)])


def _scripts(backend: str) -> list[Path]:
    return sorted(EXAMPLES.glob(f"{backend}_*.py"))


def test_every_backend_has_seed_examples(backend_name: str) -> None:
    assert _scripts(backend_name), f"no seed example in {EXAMPLES} for {backend_name}"


@pytest.mark.parametrize("index", [0, 1])
def test_seed_example_prints_its_two_error_lines(backend_name: str, index: int) -> None:
    scripts = _scripts(backend_name)
    if index >= len(scripts):
        pytest.skip(f"{backend_name} has {len(scripts)} seed example(s)")
    script = scripts[index]
    bound = float(re.search(r"# bound: (\S+)", script.read_text()).group(1))  # type: ignore[union-attr]
    env = {**os.environ, "CI": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("D2LX_BACKEND", None)  # the script's own import line picks the backend
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("error in estimating")]
    heads = [line.split(":")[0] for line in lines]
    assert heads == ["error in estimating w", "error in estimating b"], out.stdout
    w_err, b_err = _errors(lines[0]), _errors(lines[1])
    assert w_err.shape == (2,) and b_err.shape == (1,), (lines, w_err, b_err)
    assert np.all(np.abs(w_err) < bound) and np.all(np.abs(b_err) < bound), out.stdout
