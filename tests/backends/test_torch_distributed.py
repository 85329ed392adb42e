"""torch data parallel: 2 gloo processes under torchrun end where 1 process ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

HERE = Path(__file__).parent.parent


@pytest.fixture(autouse=True)
def _torch_only(backend_name: str) -> None:
    if backend_name != "torch":
        pytest.skip("torch data-parallel test runs in the torch environment")


def _one_process(d2l: Any, model: str) -> tuple[np.ndarray, np.ndarray, list[float]]:
    from d2lx.data import SyntheticRegressionData
    from d2lx.experiment import build_model

    data = SyntheticRegressionData(w=[2, -3.4, 0.5], b=4.2, num_train=203, num_val=20, batch_size=21, seed=4)
    net = build_model(d2l, model, 3, 0.05, 4)
    history = d2l.Trainer(max_epochs=3, progress=False).fit(net, data)
    w, b = net.get_w_b()
    return w, b, history.train_loss


@pytest.mark.parametrize("model", ["scratch", "concise"])
def test_two_gloo_processes_match_one_process(d2l: Any, model: str, tmp_path: Path) -> None:
    out = tmp_path / "dp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(HERE / "dp_torch_run.py"), model, str(out)],
        capture_output=True, text=True, env=env, timeout=240, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(out.read_text())
    w, b, train_loss = _one_process(d2l, model)
    assert got["steps"] == 3 * 10  # ceil(203 / 21) global steps per epoch, not per process
    np.testing.assert_allclose(np.array(got["w"]).reshape(-1, 1), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["b"], b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["history"]["train_loss"], train_loss, rtol=1e-5)


def test_data_parallel_without_a_launcher_says_how_to_launch(
    d2l: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import d2lx

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(d2lx.InvalidArgumentError, match="torchrun --nproc_per_node=2"):
        d2l.Trainer(max_epochs=1, devices=2)
