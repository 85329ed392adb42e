"""A small, throttled progress bar for epochs (and grids of runs).

Why not d2l's ``ProgressBoard``: it redraws a matplotlib figure during
training and makes a 3-epoch run take over a second. This bar writes one line
to stderr, at most ``max_rate`` times a second, and is off when stderr is not a
terminal, when ``$CI`` is set, or with ``progress=False``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO


def progress_enabled(requested: bool | None, stream: TextIO | None = None) -> bool:
    """Resolve ``progress=None`` (auto) to on/off."""
    if requested is not None:
        return bool(requested)
    stream = stream or sys.stderr
    if os.environ.get("CI"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class ProgressBar:
    """``with ProgressBar(total, "fit") as bar: bar.update(1, "loss 0.1")``."""

    def __init__(
        self,
        total: int,
        label: str,
        enabled: bool,
        stream: TextIO | None = None,
        max_rate: float = 5.0,
        width: int = 24,
    ) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.min_interval = 1.0 / max_rate
        self.width = width
        self.done = 0
        self.renders = 0
        self._last = 0.0
        self._start = time.perf_counter()
        self._suffix = ""

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1, suffix: str = "") -> None:
        self.done = min(self.done + n, self.total)
        self._suffix = suffix
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.done < self.total and now - self._last < self.min_interval:
            return
        self._last = now
        self._render(now)

    def _render(self, now: float) -> None:
        filled = int(self.width * self.done / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = now - self._start
        self.stream.write(
            f"\r{self.label} [{bar}] {self.done}/{self.total} {elapsed:5.1f}s {self._suffix}"
        )
        self.stream.flush()
        self.renders += 1

    def close(self) -> None:
        if self.enabled and self.renders:
            self.stream.write("\n")
            self.stream.flush()
