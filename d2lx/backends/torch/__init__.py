"""The PyTorch backend: ``from d2lx import torch as d2l``.

``Module`` is a ``torch.nn.Module``; the concise model uses ``nn.LazyLinear``,
``nn.MSELoss`` and ``torch.optim.SGD``; the scratch model uses explicit
``requires_grad`` tensors and the hand-written :class:`SGD` of d2l 3.4.
"""

from __future__ import annotations

import torch as _torch
import torch._dynamo  # see below

# torch.optim's constructors import torch._dynamo lazily (about 1.7 s on a
# 2-core CPU). Importing it with the backend keeps that one-off cost out of
# the first Trainer.fit and out of every fit timing.
from d2lx.backends.torch.models import SGD, LinearRegression, LinearRegressionScratch
from d2lx.backends.torch.module import Module
from d2lx.backends.torch.ops import TorchOps
from d2lx.backends.torch.trainer import Trainer
from d2lx.data import ArrayData, DataModule, SyntheticRegressionData
from d2lx.hyperparameters import HyperParameters, add_to_class

BACKEND = "torch"


def framework_version() -> str:
    return str(_torch.__version__)


def list_devices() -> list[str]:
    """Devices this backend can use, in d2lx spelling."""
    return ["cpu"] + [f"gpu:{i}" for i in range(_torch.cuda.device_count())]


def default_array_ops() -> TorchOps:
    return TorchOps(_torch.device("cpu"))


__all__ = [
    "BACKEND",
    "SGD",
    "ArrayData",
    "DataModule",
    "HyperParameters",
    "LinearRegression",
    "LinearRegressionScratch",
    "Module",
    "SyntheticRegressionData",
    "Trainer",
    "add_to_class",
    "default_array_ops",
    "framework_version",
    "list_devices",
]
