"""One seeded NumPy source for data, shuffling order and initial parameters.

Why NumPy and not each framework's RNG: ``torch.normal``, ``jax.random`` and
``tf.random`` draw different numbers from the same seed. For "the same
experiment on every backend" all randomness is drawn here, in NumPy, and handed
to the adapters as arrays that they convert once.

Each purpose ("data", "shuffle", "params") gets its own independent stream
derived from the seed with :class:`numpy.random.SeedSequence`, so building the
model before or after the data does not change either.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from d2lx.validation import check_int

Stream = Literal["data", "shuffle", "params", "keys"]
_STREAM_KEYS: dict[str, int] = {"data": 1, "shuffle": 2, "params": 3, "keys": 4}

DEFAULT_SEED = 0
_global_seed: int | None = DEFAULT_SEED


def seed(value: int | None) -> None:
    """Set the global seed used when an object is built without ``seed=``.

    d2lx is deterministic by default (seed 0). ``seed(None)`` draws fresh
    entropy from the operating system for every later object instead.
    """
    global _global_seed
    _global_seed = None if value is None else check_int("seed", value, minimum=0, example="0")


def get_seed() -> int | None:
    """Return the global seed (``None`` means fresh OS entropy each time)."""
    return _global_seed


def resolve_seed(value: int | None) -> int | None:
    """Return ``value`` if given, else the global seed (validated either way)."""
    if value is None:
        return _global_seed
    return check_int("seed", value, minimum=0, example="0")


def generator(stream: Stream, seed: int | None = None) -> np.random.Generator:
    """Return a fresh generator for ``stream``, seeded from ``seed`` or the global seed."""
    if stream not in _STREAM_KEYS:
        raise ValueError(f"unknown random stream {stream!r}; known: {sorted(_STREAM_KEYS)}")
    entropy = resolve_seed(seed)
    sequence = np.random.SeedSequence(entropy=entropy, spawn_key=(_STREAM_KEYS[stream],))
    return np.random.default_rng(sequence)


def initial_linear_params(
    rng: np.random.Generator, num_inputs: int, sigma: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the initial ``(w, b)`` of a one-output linear layer.

    ``w`` has shape ``(num_inputs, 1)`` drawn from normal(0, sigma) and ``b``
    is ``zeros(1)``, both float32, as in d2l 3.4/3.5. Adapters whose layer
    stores the weight transposed (``torch.nn.Linear``, ``gluon.nn.Dense``)
    transpose this array, so every backend starts from the same numbers.
    """
    w = rng.normal(0.0, sigma, size=(num_inputs, 1)).astype(np.float32)
    b = np.zeros((1,), dtype=np.float32)
    return w, b
