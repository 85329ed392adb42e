"""d2l's ``ProgressBoard``: training curves that never slow training down.

d2l's board redraws a matplotlib figure for every point it completes, and
reads every loss back from the device to do so; on the chapter 3 example
that is most of the run time. This board keeps d2l's surface
(``ProgressBoard(xlabel, ylabel, xlim, ylim, xscale, yscale, ls, colors,
fig, axes, figsize, display)``, ``draw(x, y, label, every_n)``, attributes
such as ``board.yscale = 'log'`` set at any time) and changes when work
happens:

* ``draw`` only stores the point; a device value stays on the device until
  the figure is drawn, and is then read with the others.
* In Jupyter the figure is redrawn at most every :attr:`min_interval`
  seconds while points arrive, and once more when the cell (or ``fit``)
  ends, in place (one output that updates). In a script nothing is drawn
  unless asked: :meth:`save` writes the figure to a file (``Trainer(plot=)``).

matplotlib is imported when a figure is first drawn, never before.
"""

from __future__ import annotations

import io
import sys
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from d2lx.hyperparameters import HyperParameters

#: Image format of live boards in Jupyter; ``d2l.use_svg_display()`` sets it (d2l draws SVG).
DISPLAY_FORMAT = {"format": "svg"}

_LIVE: weakref.WeakSet[ProgressBoard] = weakref.WeakSet()
_HOOKED = False


def _scalar(value: Any) -> float:
    from d2lx.loader import to_numpy

    return float(np.asarray(to_numpy(value), dtype=np.float64).reshape(-1).mean())


def in_notebook() -> bool:
    """True inside a Jupyter kernel (never imports IPython itself)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _flush_live_boards(*_: Any) -> None:
    for board in list(_LIVE):
        board.flush()


class ProgressBoard(HyperParameters):
    """The board that plots data points as they arrive (d2l's signature and ``draw``)."""

    #: Seconds between two live redraws while points arrive.
    min_interval = 0.5
    # Set by save_hyperparameters (and by d2l code, e.g. ``board.yscale = 'log'``).
    xlabel: str | None
    ylabel: str | None
    xlim: Any
    ylim: Any
    xscale: str
    yscale: str
    ls: Any
    colors: Any
    fig: Any
    axes: Any
    figsize: tuple[float, float]
    display: bool

    def __init__(self, xlabel: str | None = None, ylabel: str | None = None, xlim: Any = None,
                 ylim: Any = None, xscale: str = "linear", yscale: str = "linear",
                 ls: Any = ("-", "--", "-.", ":"), colors: Any = ("C0", "C1", "C2", "C3"),
                 fig: Any = None, axes: Any = None, figsize: tuple[float, float] = (3.5, 2.5),
                 display: bool = True) -> None:
        self.save_hyperparameters()
        self.title: str | None = None
        self._pending: OrderedDict[str, list[tuple[Any, Any]]] = OrderedDict()
        self._lines: OrderedDict[str, list[tuple[float, Any]]] = OrderedDict()
        self._dirty = False
        self._last_draw = float("-inf")
        self._handle: Any = None

    # -- points ------------------------------------------------------------------
    def draw(self, x: Any, y: Any, label: str, every_n: int = 1) -> None:
        """Add point ``(x, y)`` to line ``label``; every ``every_n`` points become one (their mean).

        As in d2l, a line shows the mean of each group of ``every_n``
        consecutive points (a smoother curve); an unfinished group is not
        shown. ``y`` may be a device value: it is read when the figure is drawn.
        """
        pending = self._pending.setdefault(label, [])
        self._lines.setdefault(label, [])
        pending.append((x, y))
        if len(pending) < max(1, int(every_n)):
            return
        xs = [float(p[0]) for p in pending]
        self._lines[label].append((sum(xs) / len(xs), [p[1] for p in pending]))
        pending.clear()
        self._dirty = True
        if self.display and in_notebook():
            self._watch()
            if time.perf_counter() - self._last_draw >= self.min_interval:
                self.show()

    def draw_many(self, xs: Sequence[float], ys: Sequence[Any], label: str, every_n: int = 1) -> None:
        """:meth:`draw` for each point of ``xs``/``ys`` in turn, grouped in one pass (an epoch's losses)."""
        pending = self._pending.setdefault(label, [])
        line = self._lines.setdefault(label, [])
        pending.extend(zip(xs, ys))
        n = max(1, int(every_n))
        full = len(pending) - len(pending) % n
        if not full:
            return
        for start in range(0, full, n):
            group = pending[start:start + n]
            line.append((sum(float(p[0]) for p in group) / n, [p[1] for p in group]))
        del pending[:full]
        self._dirty = True
        if self.display and in_notebook():
            self._watch()
            if time.perf_counter() - self._last_draw >= self.min_interval:
                self.show()

    def lines(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Every line's ``(x, y)`` as NumPy, device values read now."""
        out = {}
        for label, points in self._lines.items():
            for i, (x, ys) in enumerate(points):
                if not isinstance(ys, float):
                    points[i] = (x, float(np.mean([_scalar(v) for v in ys])))
            out[label] = (np.array([p[0] for p in points]), np.array([p[1] for p in points], dtype=float))
        return out

    def clear(self) -> None:
        """Forget every point (the next ``fit`` starts a new figure)."""
        self._pending.clear()
        self._lines.clear()
        self._handle = None
        self._dirty = False

    # -- drawing --------------------------------------------------------------------
    def figure(self) -> Any:
        """Draw the lines into a matplotlib figure (the board's ``fig``/``axes`` if given) and return it."""
        from matplotlib import ticker
        from matplotlib.figure import Figure

        axes = self.axes
        fig = self.fig if self.fig is not None else (axes.figure if axes is not None else None)
        if fig is None:
            fig = Figure(figsize=self.figsize, dpi=100)
            self.fig = fig
        if axes is None:
            axes = fig.axes[0] if fig.axes else fig.add_subplot()
        axes.cla()
        handles, labels = [], []
        for (label, (xs, ys)), ls, color in zip(self.lines().items(), self.ls, self.colors):
            handles.append(axes.plot(xs, ys, linestyle=ls, color=color)[0])
            labels.append(label)
        if self.xlim:
            axes.set_xlim(self.xlim)
        if self.ylim:
            axes.set_ylim(self.ylim)
        axes.set_xlabel(self.xlabel or "")
        axes.set_ylabel(self.ylabel or "")
        axes.set_xscale(self.xscale)
        axes.set_yscale(self.yscale)
        if self.xlabel == "epoch":  # whole epochs on the axis (points may sit between them)
            axes.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        if self.title:
            axes.set_title(self.title, fontsize=8)
        if handles:
            axes.legend(handles, labels)
        axes.grid(True, alpha=0.3)
        fig.tight_layout()
        return fig

    def save(self, path: str | Path, title: str | None = None, format: str | None = None) -> Path:
        """Write the figure to ``path`` (``format``, else the suffix: ``.png``, ``.svg``, ``.pdf``)."""
        path = Path(path)
        if title is not None:
            self.title = title
        self.figure().savefig(path, format=format, dpi=150)
        return path

    def show(self) -> None:
        """Draw now in Jupyter, replacing this board's previous image (no-op elsewhere)."""
        if not in_notebook():
            return
        from IPython import display

        fmt = DISPLAY_FORMAT["format"]
        buffer = io.BytesIO()
        self.figure().savefig(buffer, format=fmt)
        image = (display.SVG(data=buffer.getvalue()) if fmt == "svg"
                 else display.Image(data=buffer.getvalue(), format=fmt))
        if self._handle is None:
            self._handle = display.display(image, display_id=True)
        else:
            self._handle.update(image)
        self._last_draw = time.perf_counter()
        self._dirty = False

    def flush(self) -> None:
        """Draw what arrived since the last drawing (Jupyter; called when a cell or ``fit`` ends)."""
        if self._dirty and self.display:
            self.show()

    def _watch(self) -> None:
        """Flush this board when the running Jupyter cell ends, so its last points are shown."""
        global _HOOKED
        _LIVE.add(self)
        if not _HOOKED:
            ipython = sys.modules["IPython"].get_ipython()
            ipython.events.register("post_run_cell", _flush_live_boards)
            _HOOKED = True

    # -- pickling/copying: a figure and a display handle do not travel ------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(fig=None, axes=None, _handle=None)
        return state
