"""The JAX backend: ``from d2lx import jax as d2l``.

``Module`` is a ``flax.linen.Module``; parameters live in a flax train state
(``trainer.state``), the optimizers are optax ``GradientTransformation``\\ s
(the hand-written :class:`SGD` of d2l 3.4 and ``optax.sgd`` for the concise
model of 3.5), and the trainer's steps are pure functions under ``jax.jit``.
"""

from __future__ import annotations

import flax as _flax
import jax as _jax
import optax as _optax

from d2lx.backends.jax.models import SGD, LinearRegression, LinearRegressionScratch
from d2lx.backends.jax.module import Module, TrainState
from d2lx.backends.jax.ops import JaxOps
from d2lx.backends.jax.trainer import Trainer, gpu_devices
from d2lx.data import ArrayData, DataModule, SyntheticRegressionData
from d2lx.hyperparameters import HyperParameters, add_to_class

BACKEND = "jax"


def framework_version() -> str:
    """JAX's version (flax and optax are pinned with it in ``backends/jax.txt``)."""
    return str(_jax.__version__)


def framework_versions() -> dict[str, str]:
    """The versions of the three packages this backend is made of."""
    return {"jax": _jax.__version__, "flax": _flax.__version__, "optax": _optax.__version__}


def list_devices() -> list[str]:
    """Devices this backend can use, in d2lx spelling."""
    return ["cpu"] + [f"gpu:{i}" for i in range(len(gpu_devices()))]


def default_array_ops() -> JaxOps:
    return JaxOps(_jax.devices("cpu")[0])


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
    "TrainState",
    "Trainer",
    "add_to_class",
    "default_array_ops",
    "framework_version",
    "framework_versions",
    "list_devices",
]
