"""torch-specific behaviour: data-parallel launch errors (the fused path: test_torch_graphs.py)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _torch_only(backend_name: str) -> None:
    if backend_name != "torch":
        pytest.skip("torch data-parallel tests run in the torch environment")


def test_data_parallel_without_a_launcher_says_how_to_launch(
    d2l: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import d2lx

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(d2lx.InvalidArgumentError, match="torchrun --nproc_per_node=2"):
        d2l.Trainer(max_epochs=1, devices=2)


def test_a_batch_smaller_than_the_device_count_is_refused(d2l: Any) -> None:
    from d2lx.backends.torch.distributed import DataParallel

    dp = DataParallel.__new__(DataParallel)
    dp.world = 3
    import d2lx

    with pytest.raises(d2lx.InvalidArgumentError, match="cannot be split across 3 devices"):
        dp.check_batches(num_examples=22, batch_size=10)  # last batch: 2 examples
    dp.check_batches(num_examples=23, batch_size=10)  # last batch: 3 examples

