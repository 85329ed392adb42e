"""The JAX backend package: the adapter behind ``import d2lx.jax as d2l``.

``Module`` is a ``flax.linen.Module``; parameters live in a flax train state
(``trainer.state``), the optimizers are optax ``GradientTransformation``\\ s
(the hand-written SGD of d2l 3.4 and ``optax.sgd`` for the concise model),
and the steps are pure functions under ``jax.jit``. ``NAMESPACE`` is what the
reader's namespace holds, plus d2l's ``TrainState`` and ``get_key``.
"""

from __future__ import annotations

import flax as _flax
import jax as _jax
import numpy as _np
import optax as _optax

from d2lx import namespace as _namespace
from d2lx.backends.jax import ops as _ops
from d2lx.backends.jax.models import SGD, LinearRegression, LinearRegressionScratch
from d2lx.backends.jax.module import Module, TrainState
from d2lx.backends.jax.trainer import Trainer
from d2lx.seeding import generator, get_seed

BACKEND = "jax"


def framework_version() -> str:
    """JAX's version (flax and optax are pinned with it in ``backends/jax.txt``)."""
    return str(_jax.__version__)


def framework_versions() -> dict[str, str]:
    """The versions of the three packages this backend is made of."""
    return {"jax": _jax.__version__, "flax": _flax.__version__, "optax": _optax.__version__}


def list_devices() -> list[str]:
    """Devices this backend can use, in d2lx spelling."""
    return ["cpu"] + [f"gpu:{i}" for i in range(_ops.num_gpus())]


def default_array_ops() -> _ops.JaxOps:
    return _ops.JaxOps(_jax.devices("cpu")[0])


_KEY_STREAM: dict[object, _np.random.Generator] = {}


def get_key() -> _jax.Array:
    """A fresh PRNG key (d2l's ``get_key``), drawn from d2lx's seeded ``"keys"`` stream.

    d2l draws a random seed per call; here the sequence of keys is fixed by
    the global seed (``d2lx.seed``), so a run is reproducible.
    """
    seed = get_seed()
    stream = _KEY_STREAM.get(seed)
    if stream is None:
        stream = _KEY_STREAM[seed] = generator("keys", seed)
    return _jax.random.PRNGKey(int(stream.integers(0, 2**31 - 1)))


NAMESPACE = _namespace.contents(
    backend=BACKEND, aliases=_ops.ALIASES, cpu=_ops.cpu, gpu=_ops.gpu, num_gpus=_ops.num_gpus,
    default_array_ops=default_array_ops, framework_version=framework_version, list_devices=list_devices,
    classes={"Module": Module, "Trainer": Trainer, "LinearRegressionScratch": LinearRegressionScratch,
             "LinearRegression": LinearRegression, "SGD": SGD},
    extra={"TrainState": TrainState, "get_key": get_key, "framework_versions": framework_versions},
)
