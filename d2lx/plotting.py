"""d2l's plotting utilities (chapter 2): ``use_svg_display``, ``set_figsize``, ``set_axes``, ``plot``.

Same names, arguments and meaning as d2l's, written for d2lx: they accept
NumPy arrays, lists and any framework's tensors, and draw with pyplot, so a
notebook shows the figure when the cell ends (as with d2l). matplotlib is
imported on first use, never at ``import d2lx``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from d2lx.board import DISPLAY_FORMAT, in_notebook


def pyplot() -> Any:
    """matplotlib's pyplot (``d2l.plt``); off-screen (Agg) outside Jupyter."""
    import matplotlib

    if not in_notebook():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def use_svg_display() -> None:
    """Draw figures in Jupyter as SVG (d2l's choice); the board's live figures too."""
    DISPLAY_FORMAT["format"] = "svg"
    if in_notebook():
        from matplotlib_inline import backend_inline

        backend_inline.set_matplotlib_formats("svg")


def set_figsize(figsize: tuple[float, float] = (3.5, 2.5)) -> None:
    """Set the default size of new figures."""
    use_svg_display()
    pyplot().rcParams["figure.figsize"] = figsize


def set_axes(axes: Any, xlabel: Any, ylabel: Any, xlim: Any, ylim: Any, xscale: str, yscale: str,
             legend: Sequence[str] | None) -> None:
    """Label, scale and limit ``axes`` in one call; add a legend and a grid."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_xscale(xscale)
    axes.set_yscale(yscale)
    axes.set_xlim(xlim)
    axes.set_ylim(ylim)
    if legend:
        axes.legend(legend)
    axes.grid()


def _host(values: Any) -> Any:
    from d2lx.loader import to_numpy

    return values if isinstance(values, (list, tuple)) and not values else to_numpy(values)


def _one_axis(X: Any) -> bool:
    """True for one series: a 1-D array, or a flat list of numbers."""
    if hasattr(X, "ndim"):
        return bool(X.ndim == 1)
    return isinstance(X, list) and not hasattr(X[0], "__len__")


def plot(X: Any, Y: Any = None, xlabel: str | None = None, ylabel: str | None = None,
         legend: Sequence[str] | None = None, xlim: Any = None, ylim: Any = None,
         xscale: str = "linear", yscale: str = "linear",
         fmts: Sequence[str] = ("-", "m--", "g-.", "r:"), figsize: tuple[float, float] = (3.5, 2.5),
         axes: Any = None) -> None:
    """Plot one or several series: ``plot(x, [f(x), g(x)], 'x', 'f(x)', legend=['f', 'g'])``."""
    if _one_axis(X):
        X = [X]
    if Y is None:
        X, Y = [[]] * len(X), X
    elif _one_axis(Y):
        Y = [Y]
    if len(X) != len(Y):
        X = X * len(Y)
    set_figsize(figsize)
    if axes is None:
        axes = pyplot().gca()
    axes.cla()
    for x, y, fmt in zip(X, Y, fmts):
        x, y = _host(x), np.asarray(_host(y))
        if len(x):
            axes.plot(x, y, fmt)
        else:
            axes.plot(y, fmt)
    set_axes(axes, xlabel, ylabel, xlim, ylim, xscale, yscale, legend)
