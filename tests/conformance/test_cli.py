"""Conformance: the `d2lx` command on the active backend, and its one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _d2lx(backend: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "D2LX_BACKEND": backend, "CI": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "d2lx", *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


@pytest.mark.parametrize("model", ["scratch", "concise"])
def test_fit_json_has_the_documented_fields(backend_name: str, model: str) -> None:
    out = _d2lx(backend_name, "fit", "--model", model, "--json", "--seed", "3")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    for key in ("backend", "model", "device", "epochs", "steps", "fit_seconds", "w", "b",
                "w_error", "b_error", "train_loss", "val_loss"):
        assert key in result
    assert result["backend"] == backend_name and result["model"] == model and result["steps"] == 96
    assert abs(result["w"][0] + result["w_error"][0] - 2.0) < 1e-5  # error = true - estimate


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["fit", "--lr", "-0.5"], "lr must be > 0"),
        (["fit", "--device", "gpu:7"], "device 'gpu:7' was requested"),
        (["fit", "--resume"], "resume needs a checkpoint path"),
        (["fit", "--batch-size", "5000"], "larger than the training set"),
    ],
)
def test_errors_are_one_line_without_traceback(backend_name: str, args: list[str], words: str) -> None:
    out = _d2lx(backend_name, *args)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("d2lx: error: ") and words in lines[-1], out.stderr
    assert "Traceback" not in out.stderr
