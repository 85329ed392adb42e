"""The exceptions d2lx raises.

Every error d2lx raises on purpose is a :class:`D2lxError`, so a caller (and
the CLI) can tell "d2lx refused this, here is why and what to do" apart from a
bug. Each message names the cause *and* the fix; the CLI prints it on one line.
Each class also derives from the closest built-in exception, so code written
against plain Python (``except ValueError``) keeps working.
"""

from __future__ import annotations


class D2lxError(Exception):
    """Base class of every error d2lx raises deliberately."""


class UnknownBackendError(D2lxError, ValueError):
    """A backend name that no registry entry knows."""


class BackendNotInstalledError(D2lxError, ImportError):
    """A known backend whose framework cannot be imported."""


class DeviceUnavailableError(D2lxError, RuntimeError):
    """A device (usually a GPU) was asked for but the framework cannot see it."""


class InvalidArgumentError(D2lxError, ValueError):
    """An argument with a value outside what d2lx accepts (``lr <= 0``...)."""


class ArgumentTypeError(D2lxError, TypeError):
    """An argument of the wrong type (a string ``lr``...)."""


class ShapeMismatchError(D2lxError, ValueError):
    """Arrays whose shapes cannot work together (model width vs data width...)."""


class NonFiniteDataError(D2lxError, ValueError):
    """NaN or infinity found in input data, where training would be meaningless."""


class DivergenceError(D2lxError, FloatingPointError):
    """The training loss became NaN or infinite.

    Training stops at the first such step, before that step's update is
    applied, so the model still holds the last finite parameters.
    ``epoch`` and ``step`` (both 0-based; ``step`` counts optimizer steps since
    the start of the run) say where it happened.
    """

    def __init__(self, message: str, *, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step


class NotFittedError(D2lxError, RuntimeError):
    """Something that exists only after training (weights of a lazy layer, gradients) was asked for first."""


class OutputError(D2lxError, OSError):
    """A file d2lx writes (a plot, a checkpoint) could not be written; what trained is kept."""


class CheckpointError(D2lxError, OSError):
    """A checkpoint file that is missing, truncated, or not a d2lx checkpoint."""


__all__ = [
    "ArgumentTypeError",
    "BackendNotInstalledError",
    "CheckpointError",
    "D2lxError",
    "DeviceUnavailableError",
    "DivergenceError",
    "InvalidArgumentError",
    "NonFiniteDataError",
    "NotFittedError",
    "OutputError",
    "ShapeMismatchError",
    "UnknownBackendError",
]
