"""PyTorch array primitives for the core loader (see ``d2lx.data.ArrayOps``)."""

from __future__ import annotations

import numpy as np
import torch


class TorchOps:
    """Creates tensors on one ``torch.device``; gathers rows with ``index_select``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.device_key = f"torch:{device}"

    def asarray(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def indices(self, order: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(order.astype(np.int64)).to(self.device)

    def take(self, array: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return array.index_select(0, indices)
