"""Epoch progress, drawn by tqdm (a widget in Jupyter, a line in a terminal).

On by default in a terminal and in Jupyter, off when ``$CI`` is set, when
stderr is not a terminal (logs, pipes) or with ``progress=False``; tqdm
redraws at most :data:`MAX_RATE` times a second, so it costs nothing per
step.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any, TextIO

from d2lx.board import in_notebook

MAX_RATE = 5.0  # redraws per second at most


def progress_enabled(requested: bool | None, stream: TextIO | None = None) -> bool:
    """Resolve ``progress=None`` (auto): on in a terminal or notebook, off under ``$CI``."""
    if requested is not None:
        return bool(requested)
    if os.environ.get("CI"):
        return False
    if in_notebook():
        return True
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(total: int, label: str, enabled: bool, initial: int = 0, unit: str = "epoch") -> Any:
    """A tqdm bar over ``total`` units (epochs, runs); ``update(n)``, ``set_postfix_str(s)``, ``close()``.

    In Jupyter it is tqdm's widget when ipywidgets is installed (else tqdm's
    text bar); disabled, it is an object that does nothing at all (making a
    disabled tqdm costs more than a small fit's epoch of bookkeeping).
    """
    if not enabled:
        return _NoBar()
    if enabled and in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:
        from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=label, disable=not enabled, unit=unit,
                mininterval=1.0 / MAX_RATE, leave=True, dynamic_ncols=True, file=sys.stderr)


class _NoBar:
    """A disabled progress bar: tqdm's methods that d2lx calls, doing nothing."""

    def update(self, n: float = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass
