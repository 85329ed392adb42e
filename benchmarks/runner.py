"""One backend's run: every workload, every method, in one process; the JSON document.

One process times ONE backend (each framework has its own environment;
MXNet needs an old NumPy). Per workload the data is built once, then
``d2lx_step``, ``d2lx_fused``, the hand-written ``loop`` and (for large
workloads) the NumPy copy are timed back to back; Keras runs afterwards in a
child process for the workloads it has. Ratios and targets come last, from
the medians (:mod:`benchmarks.targets`).
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from benchmarks import loops
from benchmarks.keras_worker import KERAS_BACKENDS, run_keras
from benchmarks.loops import Frozen
from benchmarks.methods import (
    copy_target_spe,
    fused_devices,
    time_alternating,
    time_board_share,
    time_d2lx_methods,
    time_epoch_against_copy,
    time_loop,
)
from benchmarks.report import gpu_info, machine_info
from benchmarks.targets import (
    COPY_GROUPS,
    STEP_GROUPS,
    best_epoch,
    check_targets,
    gpu_bandwidth,
    method_median,
    ratios,
)
from benchmarks.timing import numpy_copier, skipped, time_copy
from benchmarks.workloads import (
    GPU_BACKENDS,
    LR,
    MLP_LR,
    SEED,
    Workload,
    initial_params,
    make_data,
    numpy_loss,
    splits,
)

SCHEMA = "d2lx-bench/2"
#: The board's share is timed with this many times a seed workload's repeats: it is a few percent
#: of a 3 ms fit, and 11 alternating pairs of such fits scatter by about as much (JAX seed/concise:
#: 7.9% in a full run, -0.3% over 41 pairs of the same code).
BOARD_REPEATS = 4
#: In a full run, each side of an alternating series (the step and copy targets' ratios) gets at least
#: this many seconds, in up to MAX_PAIRS pairs: over the workload's 5 pairs a 4 ms fit's median rests
#: on 20 ms of a VM whose speed drifts (JAX loader: 1.57 over 5 pairs where its blocks gave 0.80).
ALTERNATING_SECONDS = 1.0
MAX_PAIRS = 60


class FrameworkMissing(RuntimeError):
    """The backend's framework cannot be imported: nothing of this backend can be timed."""


class GpuMissing(RuntimeError):
    """The GPU group was asked for where it cannot run: no GPU, or a backend it does not time."""


def check_gpu(backend: str, loop_mod: ModuleType, workloads: Sequence[Workload]) -> dict[str, Any] | None:
    """The GPU the run's GPU workloads use (``None``: there are none); refuse before any work."""
    if not any(w.device == "gpu" for w in workloads):
        return None
    if backend not in GPU_BACKENDS:
        raise GpuMissing(f"the gpu group times {' and '.join(GPU_BACKENDS)}, not {backend}; "
                         f"run it with --backend {GPU_BACKENDS[-1]} or drop gpu from --only")
    name = loop_mod.gpu_name()
    if name is None:
        raise GpuMissing(f"the gpu group needs a GPU, and {backend} sees none on this machine; "
                         "run it on a GPU machine or drop gpu from --only")
    return gpu_info(name)


def copy_runner(loop_mod: ModuleType, w: Workload, X: Any, y: Any) -> Callable[[], None]:
    """One copy of a large workload's training data: NumPy's on the CPU, the device's on a GPU."""
    return numpy_copier(X, y) if w.device == "cpu" else loop_mod.copier(X, y, w.device)


def copy_baseline(copy: Callable[[], None], w: Workload, nbytes: int, repeats: int) -> dict[str, Any]:
    """The copy's median time and GB/s (what a large workload's epoch is compared with)."""
    return {**time_copy(copy, nbytes, repeats), "kind": "numpy" if w.device == "cpu" else "device"}


def load_loop(backend: str) -> ModuleType:
    try:
        return loops.load(backend)
    except ImportError as exc:
        raise FrameworkMissing(
            f"the {backend} loops need their framework, which could not be imported ({exc}); "
            f"install it with: pip install -r backends/{backend}.txt") from exc


def _d2lx_namespace(backend: str, say: Callable[[str], None]) -> tuple[ModuleType | None, str | None]:
    from d2lx import registry

    try:
        return registry.load(backend), None
    except Exception as exc:  # an adapter being rewritten must not stop the loops and Keras
        problem = f"d2lx {backend} adapter unavailable: {type(exc).__name__}: {exc}"
        say(problem)
        return None, problem


def repeats_for(repeats: int | dict[str, int], w: Workload) -> int:
    return repeats if isinstance(repeats, int) else repeats[w.group]


def alternating_pairs(repeats: int, fit_s: float | None, smoke: bool) -> int:
    """Pairs for an alternating series of fits that take about ``fit_s`` each: ``repeats``, or more for
    short fits in a full run (:data:`ALTERNATING_SECONDS`); a smoke run keeps ``repeats``."""
    if smoke or fit_s is None or fit_s <= 0:
        return repeats
    return max(repeats, min(MAX_PAIRS, math.ceil(ALTERNATING_SECONDS / fit_s)))


def run_backend(backend: str, workloads: Sequence[Workload], *, repeats: int | dict[str, int] = 5,
                spe_values: Sequence[int] = (8, 32, 128, 1024), keras: bool = True, smoke: bool = False,
                log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time d2lx (step, fused), the hand-written loop and Keras on one backend; return the JSON document."""
    from d2lx import __version__, registry

    say = log or (lambda _msg: None)
    backend = registry.canonical_name(backend)
    loop_mod = load_loop(backend)  # fails early if the framework is missing
    gpu = check_gpu(backend, loop_mod, workloads)  # as early if the GPU group cannot run
    ns, problem = _d2lx_namespace(backend, say)
    # Whether this run's fused timings exist: the trainer fuses on the device its workloads run on.
    fuses = bool(ns is not None and any(w.device in fused_devices(ns) for w in workloads))
    started = _dt.datetime.now(_dt.timezone.utc)
    results: list[dict[str, Any]] = []
    for w in workloads:
        reps = repeats_for(repeats, w)
        say(f"{backend} {w.name}: {w.num_train} x {w.num_inputs}, batch {w.batch_size}, {w.steps} steps, "
            f"{reps} repeats")
        workload_start = time.perf_counter()
        data = make_data(w)
        init = initial_params(w)
        frozen = Frozen(init)
        X, y, X_val, y_val = splits(data, w)
        methods = time_d2lx_methods(ns, problem, loop_mod, w, data, frozen, reps, spe_values)
        methods["loop"] = time_loop(loop_mod, w, data, frozen, reps)
        copier = copy_runner(loop_mod, w, X, y) if w.large else None
        copy = None if copier is None else copy_baseline(copier, w, int(X.nbytes + y.nbytes), reps)
        board = (time_board_share(ns, loop_mod, w, data, frozen, BOARD_REPEATS * reps)
                 if w.group == "seed" and ns is not None else None)
        loop = methods["loop"]
        pairs = alternating_pairs(reps, method_median(methods, "d2lx_step"), smoke)
        alternating = (time_alternating(ns, loop_mod, w, data, frozen, pairs, loop["best_variant"])
                       if w.group in STEP_GROUPS and ns is not None and loop.get("status") == "ok"
                       and methods["d2lx_step"].get("status") == "ok" else None)
        spe = copy_target_spe(methods)
        timed = "d2lx_fused" if spe > 1 else "d2lx_step"
        pairs = alternating_pairs(reps, method_median(methods, timed), smoke)
        against_copy = (time_epoch_against_copy(ns, loop_mod, w, data, frozen, pairs, spe, copier)
                        if copier is not None and w.group in COPY_GROUPS and ns is not None
                        and methods["d2lx_step"].get("status") == "ok" else None)
        results.append({"workload": w.as_dict(), "methods": methods, "numpy_copy": copy, "board": board,
                        "alternating": alternating, "epoch_against_copy": against_copy,
                        "initial_loss": numpy_loss(w, init, X, y),
                        "initial_val_loss": numpy_loss(w, init, X_val, y_val),
                        "seconds": round(time.perf_counter() - workload_start, 1)})  # Keras aside
        del data, X, y, X_val, y_val
        say(f"{backend} {w.name}: done in {results[-1]['seconds']} s")
    keras_info: dict[str, Any] = skipped("--no-keras")
    keras_workloads = [w for w in workloads if w.keras]
    if keras and keras_workloads:
        if backend in KERAS_BACKENDS:
            say(f"{backend}: Keras 3 fit in a child process (KERAS_BACKEND={backend})")
        reps_by_group = {w.group: repeats_for(repeats, w) for w in keras_workloads}
        keras_info = run_keras(backend, keras_workloads, reps_by_group, spe_values)
    for w, r in zip(workloads, results):
        if not w.keras:
            reason = ("Keras has no scratch model" if w.model == "scratch"
                      else "Keras is timed on the CPU only (no Keras on the GPU machine)" if w.device != "cpu"
                      else "Keras is timed on arrays, not on the framework-loader path")
            r["methods"]["keras"] = skipped(reason)
        elif keras_info.get("status") == "ok":
            missing = {"status": "error", "reason": "missing from the Keras worker's output"}
            r["methods"]["keras"] = keras_info["workloads"].get(w.name, missing)
        else:
            r["methods"]["keras"] = {"status": keras_info["status"], "reason": keras_info.get("reason")}
        r["ratios"] = ratios(r["methods"], r["numpy_copy"], w, r["board"], r["alternating"],
                             r["epoch_against_copy"])
        r["best_epoch_s"] = best_epoch(r["methods"])
        if w.device == "gpu" and gpu is not None:
            r["gpu_bandwidth"] = gpu_bandwidth(w, r["best_epoch_s"], r["numpy_copy"], gpu["peak_gbps"])
    doc = {
        "schema": SCHEMA,
        "smoke": smoke,
        "backend": backend,
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round((_dt.datetime.now(_dt.timezone.utc) - started).total_seconds(), 1),
        "machine": {**machine_info(), **({"gpu": gpu} if gpu else {})},
        "versions": {"d2lx": __version__, backend: loop_mod.framework_version(),
                     "keras": keras_info.get("keras_version")},
        "settings": {"repeats": repeats, "warmup": 1, "spe_values": list(spe_values), "lr": LR,
                     "mlp_lr": MLP_LR, "seed": SEED, "fuses_steps": fuses, "d2lx": problem or "ok",
                     "keras": keras_info.get("status"), "keras_reason": keras_info.get("reason")},
        "results": results,
    }
    doc["targets"] = check_targets(backend, results, fuses)
    return doc
