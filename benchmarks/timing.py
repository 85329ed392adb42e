"""Timing: a warm-up run, then timed repeats with the garbage collector paused; medians and IQR.

Why this shape: the first run of any method pays imports, tracing and
compilation, which a training job pays once and a benchmark must not count
per step; the garbage collector would otherwise fire at random inside a
timed run (most of all on the Python-heavy per-step paths). Medians and the
interquartile range are robust to the odd slow repeat of a busy machine.

Garbage: one full collection before a series; before each timed run only
the young generations, which hold what the previous run left (a tenth of a
millisecond). A full collection walks every object of the loaded frameworks
(about 0.2 s with TensorFlow or JAX), and a run that starts right after such
a pause is slower on this VM (one large JAX epoch: 18-21 ms after a young
collection or none, 27 ms after a full one, 40 ms after a 0.1 s sleep):
that is the machine waking up, not the method, and it weighed most on the
shortest runs. Without any collection, the cycles each fit leaves (with
their arrays) would pile up over a series.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from benchmarks.workloads import Workload


class Staged(NamedTuple):
    """A timed run in two stages: ``setup()`` before the clock starts, then ``run(setup's result)``.

    Why: each run trains a fresh model, and building it is the caller's
    code (a reader's ``d2l.Module`` constructor makes Keras or Gluon layers
    and their variables: about 10 ms for the TensorFlow MLP), not the work
    being compared. The hand-written loops (TensorFlow, MXNet) and Keras
    build their models once, outside their clocks, and reset the weights
    per run; d2lx's side builds its model in ``setup`` for the same reason.
    """

    setup: Callable[[], Any]
    run: Callable[[Any], Any]


Timed = Callable[[], Any] | Staged


def _timed_call(fn: Timed) -> tuple[float, Any]:
    """The seconds ``fn`` took (a :class:`Staged` one after its setup) and its output."""
    if isinstance(fn, Staged):
        prepared = fn.setup()
        start = time.perf_counter()
        out = fn.run(prepared)
    else:
        start = time.perf_counter()
        out = fn()
    return time.perf_counter() - start, out


def time_repeats(run: Timed, repeats: int, warmup: int = 1) -> tuple[list[float], Any, float]:
    """Call ``run`` ``warmup`` times, then ``repeats`` times timed, the GC paused (see the module doc).

    Returns the timed samples, the last output, and the seconds the warm-up
    took (where tracing and compiling show; a :class:`Staged` setup included).
    """
    out = None
    start = time.perf_counter()
    for _ in range(warmup):
        out = _timed_call(run)[1]
    warmup_s = time.perf_counter() - start
    samples = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            out = None  # (the last run's output is garbage for the young collection)
            gc.collect(1)
            seconds, out = _timed_call(run)
            samples.append(seconds)
    finally:
        gc.enable()
    return samples, out, warmup_s


def time_interleaved(a: Timed, b: Timed, repeats: int) -> tuple[list[float], list[float]]:
    """Time ``a`` and ``b`` alternately (after one warm-up call each), GC as in :func:`time_repeats`."""
    _timed_call(a)
    _timed_call(b)
    samples: tuple[list[float], list[float]] = ([], [])
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            for fn, out in ((a, samples[0]), (b, samples[1])):
                gc.collect(1)
                out.append(_timed_call(fn)[0])
    finally:
        gc.enable()
    return samples


def summarize(samples: Sequence[float], w: Workload, warmup_s: float) -> dict[str, Any]:
    """Median, quartiles, min/max of ``samples`` (seconds) and the rates derived from the median."""
    s = np.asarray(samples, dtype=np.float64)
    med = float(np.median(s))
    q1, q3 = (float(v) for v in np.percentile(s, [25, 75]))
    return {
        "median_s": med, "q1_s": q1, "q3_s": q3, "min_s": float(s.min()), "max_s": float(s.max()),
        "samples_s": [float(v) for v in s],
        "epoch_s": med / w.epochs,
        "us_per_step": med / w.steps * 1e6,
        "examples_per_s": w.epochs * w.num_train / med,
        "gbps": w.epochs * w.bytes_per_epoch / med / 1e9,
        "warmup_s": warmup_s,
    }


def numpy_copier(X: np.ndarray, y: np.ndarray) -> Callable[[], None]:
    """One ``np.copyto`` of the training X and y: the CPU's practical memory-bandwidth limit.

    The destination is allocated (and touched) once, outside the timing, so
    the copy measures bandwidth and not page faults.
    """
    dX, dy = np.empty_like(X), np.empty_like(y)
    np.copyto(dX, X)

    def run() -> None:
        np.copyto(dX, X)
        np.copyto(dy, y)

    return run


def time_copy(run: Callable[[], None], nbytes: int, repeats: int) -> dict[str, Any]:
    """Time one copy of ``nbytes`` (``run`` waits for it): median seconds and GB/s of data copied
    (bytes read; the memory also writes as many)."""
    samples, _, _ = time_repeats(run, max(repeats, 5))
    med = float(np.median(samples))
    return {"median_s": med, "gbps": nbytes / med / 1e9, "bytes": nbytes}


def error(exc: BaseException) -> dict[str, Any]:
    """A method that failed: reported in the JSON, never fatal to the run."""
    return {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:2000]}


def skipped(reason: str, **extra: Any) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason, **extra}


def best_of(by_key: dict[str, Any], key_name: str) -> dict[str, Any]:
    """The fastest ``ok`` entry of ``by_key`` (by median), with every entry kept under ``by_<key_name>``."""
    ok = {k: v for k, v in by_key.items() if v.get("status") == "ok"}
    if not ok:
        reasons = "; ".join(f"{k}: {v.get('reason')}" for k, v in by_key.items())
        return {"status": "error", "reason": reasons or "nothing to time", f"by_{key_name}": by_key}
    best = min(ok, key=lambda k: ok[k]["median_s"])
    out = dict(ok[best])
    out.update({"status": "ok", f"best_{key_name}": best, f"by_{key_name}": by_key})
    return out
