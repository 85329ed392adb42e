"""The small helpers of d2l's per-framework module that need no framework of their own.

``Timer`` (d2l 3.1), the device helpers ``try_gpu``/``try_all_gpus`` built on a
backend's ``cpu``/``gpu``/``num_gpus``, and :func:`method`, which turns a
row of d2l's alias table such as ``reduce_sum = x.sum(...)`` into a function.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


class Timer:
    """Record several running times: ``start()``, ``stop()``, ``avg()``, ``sum()``, ``cumsum()``."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.start()

    def start(self) -> None:
        """Start the timer."""
        self.tik = time.perf_counter()

    def stop(self) -> float:
        """Stop the timer and record the time since :meth:`start`."""
        self.times.append(time.perf_counter() - self.tik)
        return self.times[-1]

    def avg(self) -> float:
        """The average time."""
        return sum(self.times) / len(self.times)

    def sum(self) -> float:
        """The total time."""
        return sum(self.times)

    def cumsum(self) -> list[float]:
        """The accumulated times."""
        return np.array(self.times).cumsum().tolist()


def method(name: str) -> Callable[..., Any]:
    """``f(x, *args, **kwargs) = x.<name>(*args, **kwargs)``: d2l's aliases that call a tensor method."""

    def call(x: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(x, name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"``x.{name}(*args, **kwargs)`` (d2l's alias)."
    return call


def device_helpers(cpu: Callable[[], Any], gpu: Callable[[int], Any],
                   num_gpus: Callable[[], int]) -> dict[str, Callable[..., Any]]:
    """d2l's ``cpu``, ``gpu``, ``num_gpus``, ``try_gpu`` and ``try_all_gpus`` from a backend's three."""

    def try_gpu(i: int = 0) -> Any:
        """GPU ``i`` if it exists, otherwise the CPU."""
        return gpu(i) if num_gpus() >= i + 1 else cpu()

    def try_all_gpus() -> list[Any]:
        """Every GPU, or ``[cpu()]`` if there is none."""
        return [gpu(i) for i in range(num_gpus())] or [cpu()]

    return {"cpu": cpu, "gpu": gpu, "num_gpus": num_gpus, "try_gpu": try_gpu, "try_all_gpus": try_all_gpus}
