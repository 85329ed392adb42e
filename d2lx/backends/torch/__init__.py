"""The PyTorch backend package: the adapter behind ``import d2lx.torch as d2l``.

``Module`` is a ``torch.nn.Module``; the concise model uses ``nn.LazyLinear``,
``nn.MSELoss`` and ``torch.optim.SGD``; the scratch model uses explicit
parameters and the hand-written :class:`~d2lx.backends.torch.models.SGD` of
d2l 3.4. ``NAMESPACE`` is what the reader's namespace holds.
"""

from __future__ import annotations

import torch as _torch
import torch._dynamo  # torch.optim imports it lazily (~1.7 s); pay it at import, not in fit

from d2lx import namespace as _namespace
from d2lx.backends.torch import ops as _ops
from d2lx.backends.torch.models import SGD, LinearRegression, LinearRegressionScratch
from d2lx.backends.torch.module import Module
from d2lx.backends.torch.trainer import Trainer

BACKEND = "torch"


def framework_version() -> str:
    return str(_torch.__version__)


def list_devices() -> list[str]:
    """Devices this backend can use, in d2lx spelling."""
    return ["cpu"] + [f"gpu:{i}" for i in range(_torch.cuda.device_count())]


def default_array_ops() -> _ops.TorchOps:
    return _ops.TorchOps(_torch.device("cpu"))


NAMESPACE = _namespace.contents(
    backend=BACKEND, aliases=_ops.ALIASES, cpu=_ops.cpu, gpu=_ops.gpu, num_gpus=_ops.num_gpus,
    default_array_ops=default_array_ops, framework_version=framework_version, list_devices=list_devices,
    classes={"Module": Module, "Trainer": Trainer, "LinearRegressionScratch": LinearRegressionScratch,
             "LinearRegression": LinearRegression, "SGD": SGD},
)
