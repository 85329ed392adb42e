"""``d2l.Module`` for PyTorch: a ``torch.nn.Module`` with d2l's methods."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from d2lx.module import ModuleBase


def trainable_tensors(model: nn.Module) -> list[torch.Tensor]:
    """What an update changes: parameters that require grad, and plain ``requires_grad`` tensors.

    d2l's scratch models keep ``self.w = torch.normal(..., requires_grad=True)``,
    a tensor attribute that ``parameters()`` does not list.
    """
    found = [p for p in model.parameters() if p.requires_grad]
    seen = {id(p) for p in found}
    for value in vars(model).values():
        if isinstance(value, torch.Tensor) and value.requires_grad and id(value) not in seen:
            found.append(value)
            seen.add(id(value))
    return found


class Module(ModuleBase, nn.Module):
    """Base class of models: ``nn.Module`` + d2l's ``training_step``, ``plot``, ``board``..."""

    def __init__(self, plot_train_per_epoch: int = 2, plot_valid_per_epoch: int = 1) -> None:
        nn.Module.__init__(self)
        self.save_hyperparameters()

    def apply_init(self, inputs: Sequence[Any], init: Any = None) -> None:
        """d2l 6.4: build lazy layers by a forward pass on ``inputs``; apply ``init`` to ``self.net``."""
        self.forward(*inputs)
        if init is not None:
            self.net.apply(init)

    def materialize(self, example: Sequence[Any], device: torch.device) -> None:
        """Build lazy layers from a real batch's inputs, then move the model to ``device``.

        Lazy layers are built where the model already is (the CPU, unless
        the reader moved it), so their initial weights come from the same
        generator whatever the trainer's device: a run on a GPU starts where
        the same run on the CPU starts (built on the GPU, they would draw
        from the CUDA generator instead). A d2l-style scratch model's
        ``requires_grad`` tensor attributes are moved too (``Module.to``
        only moves parameters and buffers); the optimizer is made after
        this, so it holds the moved tensors.
        """
        if any(isinstance(p, nn.parameter.UninitializedParameter) for p in self.parameters()):
            home = next((t.device for t in (*self.parameters(), *self.buffers())
                         if not isinstance(t, nn.parameter.UninitializedTensorMixin)), torch.device("cpu"))
            inputs = [t.to(home) if isinstance(t, torch.Tensor) else t for t in example[:-1]]
            with torch.no_grad():
                self(*inputs)
        self.to(device)
        for name, value in list(vars(self).items()):
            if isinstance(value, torch.Tensor) and value.requires_grad and value.device != device:
                setattr(self, name, value.detach().to(device).requires_grad_(True))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The model's output for a NumPy batch, as NumPy float32 (framework-free)."""
        tensors = trainable_tensors(self)
        device = tensors[0].device if tensors else torch.device("cpu")
        with torch.no_grad():
            out = self(torch.as_tensor(np.asarray(X, dtype=np.float32), device=device))
        return np.asarray(out.detach().cpu().numpy(), dtype=np.float32)
