"""``d2l.Module`` for PyTorch: a ``torch.nn.Module`` with d2l's methods."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from d2lx.module import ModuleBase


class Module(ModuleBase, nn.Module):
    """Base class of models: ``nn.Module`` + ``training_step``/``validation_step``...

    Two hooks let the trainer treat any model alike: :meth:`param_tensors`
    (what gradient clipping and checkpoints act on; plain ``requires_grad``
    tensors of a scratch model are not ``nn.Parameter``s) and
    :meth:`materialize` (build lazy layers, move to the device).
    """

    def __init__(self, plot_train_per_epoch: int = 2, plot_valid_per_epoch: int = 1) -> None:
        nn.Module.__init__(self)
        self.save_hyperparameters()

    def param_tensors(self) -> list[torch.Tensor]:
        return [p for p in self.parameters() if p.requires_grad]

    def materialize(self, num_inputs: int, device: torch.device) -> None:
        self.to(device)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Forward a NumPy batch on the model's device; return NumPy (framework-free)."""
        params = self.param_tensors()
        device = params[0].device if params else torch.device("cpu")
        with torch.no_grad():
            out = self(torch.as_tensor(np.asarray(X, dtype=np.float32), device=device))
        return out.detach().cpu().numpy()
