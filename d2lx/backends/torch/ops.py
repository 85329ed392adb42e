"""PyTorch arrays and devices: the core's array primitives, d2l's alias table, ``cpu``/``gpu``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from d2lx.helpers import method
from d2lx.loader import gather_block_bytes, host_array, to_numpy


class TorchOps:
    """:class:`d2lx.loader.ArrayOps` on one ``torch.device``; rows are gathered with ``index_select``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.device_key = f"torch:{device}"
        self.gather_block_bytes = gather_block_bytes(device.type == "cpu")

    def asarray(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def indices(self, order: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(order.astype(np.int64)).to(self.device)

    def take(self, array: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return array.index_select(0, indices)

    def split(self, array: torch.Tensor, size: int) -> Sequence[torch.Tensor]:
        return torch.split(array, size)  # views

    def to_device(self, value: Any) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value if value.device == self.device else value.to(self.device, non_blocking=True)
        return torch.as_tensor(host_array(value), device=self.device)

    def to_host(self, values: Sequence[Any]) -> np.ndarray:
        try:  # the common case, an epoch of scalar losses: one stack, one copy
            return torch.stack(list(values)).detach().reshape(-1).double().cpu().numpy()
        except (TypeError, RuntimeError):  # vectors of several lengths, or plain numbers
            flat = [v.detach().reshape(-1) if isinstance(v, torch.Tensor) else torch.as_tensor(v).reshape(-1)
                    for v in values]
            return torch.cat(flat).double().cpu().numpy()


def cpu() -> torch.device:
    """The CPU device."""
    return torch.device("cpu")


def gpu(i: int = 0) -> torch.device:
    """GPU ``i`` (``cuda:i``)."""
    return torch.device(f"cuda:{i}")


def num_gpus() -> int:
    """The number of GPUs torch can use."""
    return torch.cuda.device_count()


def _numpy(x: Any, *args: Any, **kwargs: Any) -> np.ndarray:
    """A NumPy copy (or view) of a tensor, from any device (d2l: ``x.detach().numpy()``)."""
    return to_numpy(x)


#: d2l 1.0.3's alias table for PyTorch: the same names, the same meaning.
ALIASES: dict[str, Any] = {
    "nn_Module": nn.Module,
    "ones_like": torch.ones_like, "ones": torch.ones, "zeros_like": torch.zeros_like, "zeros": torch.zeros,
    "tensor": torch.tensor, "arange": torch.arange, "meshgrid": torch.meshgrid, "sin": torch.sin,
    "sinh": torch.sinh, "cos": torch.cos, "cosh": torch.cosh, "tanh": torch.tanh, "linspace": torch.linspace,
    "exp": torch.exp, "log": torch.log, "normal": torch.normal, "rand": torch.rand, "randn": torch.randn,
    "matmul": torch.matmul, "int32": torch.int32, "int64": torch.int64, "float32": torch.float32,
    "concat": torch.cat, "stack": torch.stack, "abs": torch.abs, "eye": torch.eye, "sigmoid": torch.sigmoid,
    "batch_matmul": torch.bmm,
    "numpy": _numpy, "size": method("numel"), "reshape": method("reshape"), "to": method("to"),
    "reduce_sum": method("sum"), "argmax": method("argmax"), "astype": method("type"),
    "transpose": method("t"), "reduce_mean": method("mean"), "expand_dims": method("unsqueeze"),
    "swapaxes": method("swapaxes"), "repeat": method("repeat"),
}
