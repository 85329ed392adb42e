"""Framework-free device requests: ``"cpu"``, ``"gpu"``, ``"gpu:1"``.

The core only parses and validates what the user asked for; each adapter maps
the resulting :class:`DeviceSpec` to its framework's device object and raises
:func:`gpu_unavailable` when the framework cannot see that GPU. There is never
a silent fallback to the CPU: a run that asked for a GPU and ran on a CPU would
report timings and results for an experiment nobody asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from d2lx.errors import DeviceUnavailableError, InvalidArgumentError
from d2lx.validation import check_int

DEVICE_ENV_VAR = "D2LX_DEVICE"
_ALIASES = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu"}


@dataclass(frozen=True)
class DeviceSpec:
    """A requested device: ``kind`` is ``"cpu"`` or ``"gpu"``, ``index`` its number."""

    kind: Literal["cpu", "gpu"]
    index: int = 0

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"gpu:{self.index}"


def parse_device(text: str) -> DeviceSpec:
    """Parse ``"cpu"``, ``"gpu"``, ``"gpu:N"`` (``"cuda"`` is accepted for ``"gpu"``)."""
    if not isinstance(text, str):
        raise InvalidArgumentError(
            f"device must be a string like 'cpu', 'gpu' or 'gpu:1', got {text!r}"
        )
    name, _, index_text = text.strip().lower().partition(":")
    kind = _ALIASES.get(name)
    if kind is None:
        raise InvalidArgumentError(
            f"unknown device {text!r}; use 'cpu', 'gpu' or 'gpu:N' (N = GPU number)"
        )
    if kind == "cpu":
        if index_text not in ("", "0"):
            raise InvalidArgumentError(
                f"device {text!r}: name the CPU as 'cpu' (use devices=N for several CPU devices)"
            )
        return DeviceSpec("cpu", 0)
    if index_text == "":
        return DeviceSpec("gpu", 0)
    if not index_text.isdigit():
        raise InvalidArgumentError(f"device {text!r}: the GPU number must be an integer, e.g. 'gpu:1'")
    return DeviceSpec("gpu", int(index_text))


def resolve_device(device: str | None = None, num_gpus: int = 0) -> DeviceSpec:
    """Decide the device: ``device=`` > ``num_gpus`` > ``$D2LX_DEVICE`` > CPU.

    ``num_gpus`` is d2l's spelling: ``Trainer(num_gpus=1)`` means the first GPU.
    """
    num_gpus = check_int("num_gpus", num_gpus, minimum=0, example="1")
    if device is not None:
        spec = parse_device(device)
        if num_gpus and spec.kind == "cpu":
            raise InvalidArgumentError(
                f"device='cpu' contradicts num_gpus={num_gpus}; pass only one of them"
            )
        return spec
    if num_gpus >= 1:  # num_gpus=N > 1 also sets devices=N (see resolve_devices)
        return DeviceSpec("gpu", 0)
    env = os.environ.get(DEVICE_ENV_VAR, "").strip()
    if env:
        return parse_device(env)
    return DeviceSpec("cpu", 0)


STRATEGIES = ("data_parallel",)


def resolve_devices(
    device: str | None = None, num_gpus: int = 0, devices: int | None = None, strategy: str | None = None
) -> tuple[list[DeviceSpec], str | None]:
    """Resolve the device list and the strategy of a Trainer.

    ``devices=N`` (or d2l's ``num_gpus=N`` with N > 1) asks for N devices of
    the kind ``device`` names, starting at its index: ``device="gpu",
    devices=2`` is ``gpu:0, gpu:1``; ``device="cpu", devices=2`` is two CPU
    devices (JAX host devices, TF logical devices, ``mx.cpu(0..1)``, or two
    torch processes). More than one device means ``strategy="data_parallel"``.
    """
    first = resolve_device(device, num_gpus)
    if devices is None:
        devices = num_gpus if num_gpus > 1 else 1
    devices = check_int("devices", devices, minimum=1, example="2")
    if num_gpus > 1 and devices != num_gpus:
        raise InvalidArgumentError(f"num_gpus={num_gpus} contradicts devices={devices}; pass only one")
    if strategy is not None and strategy not in STRATEGIES:
        raise InvalidArgumentError(
            f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)} (or None for one device)"
        )
    if devices > 1 and strategy is None:
        strategy = "data_parallel"
    specs = [DeviceSpec(first.kind, first.index + i if first.kind == "gpu" else i) for i in range(devices)]
    return specs, strategy


def gpu_unavailable(backend: str, spec: DeviceSpec, visible: int, hint: str) -> DeviceUnavailableError:
    """Build the error for a GPU the framework cannot see (one message for all adapters)."""
    seen = "no GPU" if visible == 0 else f"only {visible} GPU(s) (gpu:0..gpu:{visible - 1})"
    return DeviceUnavailableError(
        f"device '{spec}' was requested but {backend} sees {seen}; "
        f"use device='cpu' (or unset {DEVICE_ENV_VAR}), or {hint}"
    )
