"""Ratios of medians, and the targets they are stated in (reported, never asserted).

Why ratios of the same run: every number here is wall-clock time on a
shared machine, so d2lx is only ever compared with a baseline timed minutes
apart in the same process (the hand-written loop, the NumPy copy) or in its
child (Keras). The targets are the project's performance goals; a benchmark
run reports whether they are met, a test never fails on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks.workloads import Workload

BACKENDS = ("jax", "mxnet", "tensorflow", "torch")
KERAS_BACKENDS = ("jax", "tensorflow", "torch")
#: Groups whose per-step overhead is a target (the sweep is reported, not targeted).
STEP_GROUPS = ("seed", "large", "mlp", "loader", "gpu")
#: Groups whose best epoch is also timed alternately with the copy of its data (the copy target's).
COPY_GROUPS = ("large", "gpu")

#: ``value`` names a ratio of :func:`ratios`; ``op`` is how it must compare with ``threshold``.
#: ``needs_fusion``: only on backends whose trainer fuses steps; ``keras``: only where Keras runs
#: the workload; ``large_only``: only workloads whose NumPy copy is timed.
TARGETS: tuple[dict[str, Any], ...] = (
    {"name": "d2lx step-by-step / hand-written loop (timed alternately)",
     "value": "step_over_loop_alternating", "op": "<=", "threshold": 1.15, "groups": STEP_GROUPS,
     "backends": BACKENDS},
    {"name": "d2lx fused epoch / NumPy copy of the training data (timed alternately)",
     "value": "fused_over_copy_alternating", "op": "<=",
     "threshold": 3.0, "groups": ("large",), "backends": ("jax", "tensorflow", "torch"),
     "needs_fusion": True},
    {"name": "Keras 3 fit (best spe) / d2lx fused", "value": "keras_over_fused", "op": ">=",
     "threshold": 1.0, "groups": ("seed", "large", "mlp"), "backends": KERAS_BACKENDS, "keras": True},
    {"name": "board's share of a seed fit (d2l's loss curves)", "value": "board_share", "op": "<=",
     "threshold": 0.05, "groups": ("seed",), "backends": BACKENDS},
    {"name": "d2lx bandwidth / NumPy copy bandwidth", "value": "bandwidth_fraction", "op": ">=",
     "threshold": 0.5, "groups": ("sweep",), "backends": BACKENDS, "large_only": True},
)

RATIO_KEYS = ("step_over_loop", "fused_over_loop", "loop_over_fused", "keras_over_fused", "keras_over_loop",
              "fused_over_copy", "bandwidth_fraction", "board_share", "step_over_loop_alternating",
              "fused_over_copy_alternating")


def method_median(methods: dict[str, Any], key: str) -> float | None:
    """Method ``key``'s median seconds, or ``None`` where it did not run."""
    m = methods.get(key, {})
    return float(m["median_s"]) if m.get("status") == "ok" else None


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def fused_median(methods: dict[str, Any]) -> float | None:
    """``d2lx_fused``'s median, or ``d2lx_step``'s where fusing cannot differ (``same_as``)."""
    fused = methods.get("d2lx_fused", {})
    if fused.get("status") == "ok":
        return float(fused["median_s"])
    if fused.get("same_as") == "d2lx_step":
        return method_median(methods, "d2lx_step")
    return None


def ratios(methods: dict[str, Any], copy: dict[str, Any] | None, w: Workload,
           board: dict[str, Any] | None = None, alternating: dict[str, Any] | None = None,
           against_copy: dict[str, Any] | None = None) -> dict[str, float | None]:
    """The ratios of medians the targets are stated in (``None`` where a side is missing).

    ``fused_over_copy``: the best d2lx epoch (validation included, by the
    trainer's clock: :func:`best_epoch`) over the NumPy copy of the training
    X and y; ``bandwidth_fraction`` its inverse
    as a fraction of the copy's bandwidth (training bytes only);
    ``board_share``: the board's part of a fit (``time_board_share``);
    ``step_over_loop_alternating``: ``d2lx_step`` over the loop, the two
    timed alternately (``time_alternating``), what the per-step target uses;
    ``fused_over_copy_alternating``: the fused epoch (step by step where the
    trainer does not fuse) over the copy, the two timed alternately
    (``time_epoch_against_copy``), what the copy target uses.
    """
    step, loop, keras = (method_median(methods, k) for k in ("d2lx_step", "loop", "keras"))
    fused = fused_median(methods)
    best = min((t for t in (step, fused) if t is not None), default=None)
    out: dict[str, float | None] = {
        "step_over_loop": _div(step, loop),
        "fused_over_loop": _div(fused, loop),
        "loop_over_fused": _div(loop, fused),
        "keras_over_fused": _div(keras, fused),
        "keras_over_loop": _div(keras, loop),
        "fused_over_copy": None,
        "bandwidth_fraction": None,
        "board_share": board["share"] if board is not None and board.get("status") == "ok" else None,
        "step_over_loop_alternating": (alternating["ratio"] if alternating is not None
                                       and alternating.get("status") == "ok" else None),
        "fused_over_copy_alternating": (against_copy["ratio"] if against_copy is not None
                                        and against_copy.get("status") == "ok" else None),
    }
    epoch = best_epoch(methods)
    if epoch is None and best is not None:  # (files from before epochs were timed on their own)
        epoch = best / w.epochs
    if copy is not None and epoch is not None:
        out["fused_over_copy"] = _div(epoch, copy["median_s"])
        out["bandwidth_fraction"] = w.bytes_per_epoch / epoch / 1e9 / copy["gbps"]
    return out


def best_epoch(methods: dict[str, Any]) -> float | None:
    """The fastest d2lx epoch by the trainer's own clock (``History.seconds``), step by step or fused.

    An epoch, validation included, from its first batch to its losses on
    the host: what a long run repeats. The fit around it also builds the
    model and its optimizer (on TensorFlow about 10 ms of variable creation
    for the concise model), once per run; the whole fit is what the
    comparisons with the hand-written loop and Keras time.
    """
    key = fastest_epoch_method(methods)
    return None if key is None else float(methods[key]["epoch_median_s"])


def fastest_epoch_method(methods: dict[str, Any]) -> str | None:
    """``"d2lx_step"`` or ``"d2lx_fused"``: the one of :func:`best_epoch` (the first on a tie)."""
    fused = methods.get("d2lx_fused", {})
    keys = ("d2lx_step",) if fused.get("same_as") == "d2lx_step" else ("d2lx_step", "d2lx_fused")
    timed = [k for k in keys if methods.get(k, {}).get("status") == "ok" and "epoch_median_s" in methods[k]]
    return min(timed, key=lambda k: float(methods[k]["epoch_median_s"]), default=None)


def gpu_bandwidth(w: Workload, epoch_s: float | None, copy: dict[str, Any] | None,
                  peak_gbps: float | None) -> dict[str, Any]:
    """A GPU epoch's memory traffic against the device copy and the card's peak (reported, no target).

    ``epoch_bytes`` is the least an epoch must read: the training and the
    validation X and y, once each (the shuffle's gather reads and writes
    the training data once more). A device copy reads and writes its bytes,
    so its traffic is twice its data: that is the figure to hold against
    the peak.
    """
    epoch_bytes = (w.num_train + w.num_val) * (w.num_inputs + 1) * 4
    epoch_gbps = None if not epoch_s else epoch_bytes / epoch_s / 1e9
    copy_traffic = None if copy is None else 2 * copy["gbps"]
    return {"epoch_bytes": epoch_bytes, "epoch_gbps": epoch_gbps, "copy_traffic_gbps": copy_traffic,
            "peak_gbps": peak_gbps, "epoch_of_peak": _div(epoch_gbps, peak_gbps),
            "copy_of_peak": _div(copy_traffic, peak_gbps)}


def _applies(t: dict[str, Any], backend: str, fuses: bool, wl: dict[str, Any]) -> bool:
    if backend not in t["backends"] or wl["group"] not in t["groups"]:
        return False
    if t.get("needs_fusion") and not fuses:
        return False
    if t.get("keras") and (wl["model"] not in ("concise", "mlp") or wl.get("loader", "d2lx") != "d2lx"):
        return False
    return not (t.get("large_only") and not wl["large"])


def check_targets(backend: str, results: Sequence[dict[str, Any]], fuses: bool) -> list[dict[str, Any]]:
    """One row per (target, workload): value, threshold and whether it is met (``None``: not measured)."""
    rows = []
    for t in TARGETS:
        for r in results:
            wl = r["workload"]
            if not _applies(t, backend, fuses, wl):
                continue
            value = r["ratios"].get(t["value"])
            met = None if value is None else (value <= t["threshold"] if t["op"] == "<="
                                              else value >= t["threshold"])
            rows.append({"target": t["name"], "ratio": t["value"], "workload": wl["name"],
                         "value": value, "op": t["op"], "threshold": t["threshold"], "met": met})
    return rows
