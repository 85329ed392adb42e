"""Data-parallel training for the PyTorch backend on ``torch.distributed``.

One process per device, started by ``torchrun`` (or ``d2lx fit --devices N``,
which starts torchrun for you). Every process builds the same seeded data and
draws the same shuffling order; each takes its contiguous shard of every
global batch (:func:`d2lx.data.shard_slices`). The step runs through
``DistributedDataParallel`` (gloo on CPU, nccl on GPU), which all-reduces and
*averages* the gradients. Shards may differ in size by one example, so each
process scales its shard's mean loss by ``shard * world / batch``: the average
of those gradients is exactly the gradient of the global batch's mean loss,
and N-process training ends where one-process training ends.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from d2lx.data import check_shardable, shard_slices
from d2lx.devices import DeviceSpec
from d2lx.errors import InvalidArgumentError


class _TrainingStep(nn.Module):
    """Routes ``model.training_step`` through DDP's forward, so a user's step is kept."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: tuple[torch.Tensor, ...]) -> Any:
        return self.model.training_step(batch)


class DataParallel:
    """The process group, this process's rank and device, and the DDP-wrapped step."""

    def __init__(self, specs: list[DeviceSpec]) -> None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world != len(specs) or "RANK" not in os.environ:
            raise InvalidArgumentError(
                f"strategy='data_parallel' with devices={len(specs)} on torch runs one process per "
                f"device, but this is {world} process(es); start it with "
                f"`torchrun --nproc_per_node={len(specs)} your_script.py` "
                f"or `d2lx fit --devices {len(specs)}`"
            )
        self.world = world
        self.rank = int(os.environ["RANK"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.spec = specs[self.local_rank % len(specs)]
        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.spec.kind == "gpu" else "gloo")
        self.step_module: DistributedDataParallel | None = None

    def wrap(self, model: nn.Module, device: torch.device) -> None:
        ids = [device.index] if device.type == "cuda" else None
        self.step_module = DistributedDataParallel(_TrainingStep(model), device_ids=ids)

    def check_batches(self, num_examples: int, batch_size: int) -> None:
        """Refuse batches that would leave a device without examples."""
        check_shardable(num_examples, batch_size, self.world)

    def shard(self, batch: tuple[torch.Tensor, ...]) -> tuple[tuple[torch.Tensor, ...], float]:
        n = int(batch[-1].shape[0])
        part = shard_slices(n, self.world)[self.rank]
        weight = (part.stop - part.start) * self.world / n
        return tuple(t[part] for t in batch), weight

    def all_finite(self, loss: torch.Tensor) -> bool:
        """One collective per step, so every process stops at the same step."""
        flag = torch.isfinite(loss.detach()).all().to(torch.float32).reshape(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def sum_over_processes(self, values: torch.Tensor) -> np.ndarray:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values.double().cpu().numpy()
