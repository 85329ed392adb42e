"""The benchmark engine behind ``d2lx bench`` (see ``benchmarks/README.md``).

One process times ONE backend (every framework has its own environment), on
the same :class:`d2lx.SyntheticRegressionData`, after a warm-up run, with
several repeats:

* ``d2lx_step``: ``Trainer(steps_per_execution=1).fit``;
* ``d2lx_fused``: the same with several ``steps_per_execution`` (best kept);
* ``loop``: the framework's hand-written loop, ``benchmarks/loops/<backend>.py``
  (the fastest of its variants kept);
* ``keras``: Keras 3 ``Model.fit`` with ``KERAS_BACKEND=<backend>`` (jax,
  tensorflow, torch), in a child process (Keras picks its backend at
  import), with its best ``steps_per_execution``.

Every method trains from the same initial parameters, on the same arrays,
for the same number of epochs and steps, without validation data, and
returns the trained ``w``/``b`` to the host (which waits for the device).
The result is one JSON document with medians, spreads and the ratios the
targets are stated in (:data:`TARGETS`); ``benchmarks/combine.py`` merges the
per-backend files into a Markdown table and a plot. Nothing here asserts a
timing: targets are reported, never enforced.

This module imports no framework at import time.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from d2lx.errors import BackendNotInstalledError, InvalidArgumentError

SCHEMA = "d2lx-bench/1"
BACKENDS = ("jax", "mxnet", "tensorflow", "torch")
#: Backends Keras 3 runs on; MXNet has none.
KERAS_BACKENDS = ("jax", "tensorflow", "torch")
#: Examples whose X and y together exceed this are "large": their bandwidth is
#: compared with a NumPy copy (well past this CPU's last-level cache).
LARGE_BYTES = 32 * 2**20
SEED = 0
LR = 0.03

#: The targets the runner reports (never asserts). ``value`` names a ratio of
#: :func:`ratios`; ``op`` is how it must compare with ``threshold``.
TARGETS: tuple[dict[str, Any], ...] = (
    {"name": "d2lx step-by-step / hand-written loop", "value": "step_over_loop", "op": "<=",
     "threshold": 1.15, "group": "seed", "backends": BACKENDS},
    {"name": "hand-written loop / d2lx fused", "value": "loop_over_fused", "op": ">=",
     "threshold": 5.0, "group": "seed", "backends": ("jax", "tensorflow")},
    {"name": "Keras 3 fit (best spe) / d2lx fused", "value": "keras_over_fused", "op": ">=",
     "threshold": 1.0, "group": "seed", "backends": KERAS_BACKENDS},
    {"name": "d2lx bandwidth / NumPy copy bandwidth", "value": "bandwidth_fraction", "op": ">=",
     "threshold": 0.5, "group": "sweep", "backends": BACKENDS},
)


# -- workloads ----------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    """One training job: ``epochs`` passes over ``num_train`` examples of ``num_inputs``."""

    name: str
    group: str  # "seed" or "sweep"
    model: str  # "concise" or "scratch"
    num_train: int
    num_inputs: int
    batch_size: int
    epochs: int

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.num_train // self.batch_size)

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def bytes_per_epoch(self) -> int:
        """Bytes of X and y (float32) one epoch reads."""
        return self.num_train * (self.num_inputs + 1) * 4

    @property
    def large(self) -> bool:
        return self.bytes_per_epoch >= LARGE_BYTES

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(steps=self.steps, steps_per_epoch=self.steps_per_epoch,
                 bytes_per_epoch=self.bytes_per_epoch, large=self.large)
        return d


def seed_workloads() -> list[Workload]:
    """d2l 3.4/3.5: 1000 examples, 2 inputs, batch 32, 3 epochs, both models."""
    return [Workload(f"seed/{m}", "seed", m, 1000, 2, 32, 3) for m in ("concise", "scratch")]


#: The scaling sweep (concise model): three one-axis sweeps through a common
#: centre (10^5 examples, 16 inputs, batch 1024), spanning 10^3..10^6
#: examples, 2..1024 inputs and batch 32..8192. A full 4x4x4 grid would take
#: hours on a 2-core CPU (10^6 examples x 1024 inputs is 4 GB of float32 and
#: 10^6 examples at batch 32 is 31250 Python-level steps per epoch per method).
SWEEP_GRID: tuple[tuple[int, int, int, int], ...] = (
    # (examples, inputs, batch, epochs)
    (1_000, 16, 256, 2),
    (10_000, 16, 256, 2),
    (100_000, 16, 256, 2),
    (1_000_000, 16, 256, 2),
    (100_000, 2, 1024, 2),
    (100_000, 16, 1024, 2),
    (100_000, 128, 1024, 2),
    (100_000, 1024, 1024, 2),
    (100_000, 16, 32, 1),
    (100_000, 16, 8192, 2),
    (1_000_000, 64, 8192, 2),
)
#: ``--quick``: a smoke-sized sweep (seconds, not minutes).
QUICK_GRID: tuple[tuple[int, int, int, int], ...] = (
    (10_000, 16, 256, 1),
    (200_000, 64, 8192, 1),
)


def sweep_workloads(grid: Iterable[tuple[int, int, int, int]] = SWEEP_GRID) -> list[Workload]:
    return [Workload(f"sweep/n{n}_d{d}_b{bs}", "sweep", "concise", n, d, bs, e) for n, d, bs, e in grid]


def make_data(w: Workload) -> Any:
    """The workload's data: seed ``w``/``b`` for 2 inputs, else a seeded ``w``."""
    from d2lx.data import SyntheticRegressionData
    from d2lx.experiment import SEED_B, SEED_W

    if w.num_inputs == len(SEED_W):
        true_w = np.asarray(SEED_W)
    else:
        true_w = np.random.default_rng(SEED).uniform(-2, 2, w.num_inputs)
    return SyntheticRegressionData(true_w, SEED_B, noise=0.01, num_train=w.num_train, num_val=0,
                                   batch_size=w.batch_size, seed=SEED)


def initial_params(num_inputs: int) -> tuple[np.ndarray, np.ndarray]:
    """The initial ``w`` (normal(0, 0.01)) and ``b`` (0) d2lx's models start from."""
    from d2lx.seeding import generator, initial_linear_params

    w, b = initial_linear_params(generator("params", SEED), num_inputs, 0.01)
    return np.asarray(w, np.float32).reshape(-1, 1), np.asarray(b, np.float32).reshape(1)


# -- timing -------------------------------------------------------------------------
def summarize(samples: Sequence[float], w: Workload) -> dict[str, Any]:
    """Median, quartiles, min/max of ``samples`` (seconds) and the per-step rates."""
    s = np.asarray(samples, dtype=np.float64)
    med = float(np.median(s))
    q1, q3 = (float(v) for v in np.percentile(s, [25, 75]))
    return {
        "median_s": med, "q1_s": q1, "q3_s": q3, "min_s": float(s.min()), "max_s": float(s.max()),
        "samples_s": [float(v) for v in s],
        "us_per_step": med / w.steps * 1e6,
        "examples_per_s": w.epochs * w.num_train / med,
        "gbps": w.epochs * w.bytes_per_epoch / med / 1e9,
    }


def time_repeats(run: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[list[float], Any]:
    """Call ``run`` ``warmup`` times untimed, then ``repeats`` times timed (GC paused)."""
    out = None
    for _ in range(warmup):
        out = run()
    samples = []
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            out = run()
            samples.append(time.perf_counter() - start)
        finally:
            gc.enable()
    return samples, out


def numpy_copy(X: np.ndarray, y: np.ndarray, repeats: int) -> dict[str, float]:
    """Bandwidth of ``np.copyto`` of X and y (bytes read / time): the CPU's practical limit."""
    dX, dy = np.empty_like(X), np.empty_like(y)

    def run() -> None:
        np.copyto(dX, X)
        np.copyto(dy, y)

    samples, _ = time_repeats(run, max(repeats, 5))
    med = float(np.median(samples))
    return {"median_s": med, "gbps": (X.nbytes + y.nbytes) / med / 1e9}


def _error(w_hat: np.ndarray, b_hat: np.ndarray, data: Any) -> float:
    return float(max(np.abs(np.asarray(w_hat).reshape(-1) - data.w).max(),
                     abs(float(np.asarray(b_hat).reshape(-1)[0]) - data.b)))


# -- the four methods ------------------------------------------------------------------
def default_loops_dir() -> Path | None:
    """``benchmarks/loops`` of the source tree d2lx runs from, else of the working directory."""
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        candidate = root / "benchmarks" / "loops"
        if candidate.is_dir():
            return candidate
    return None


def load_loop(backend: str, loops_dir: Path | None = None) -> ModuleType:
    """Import ``benchmarks/loops/<backend>.py`` under a private module name."""
    folder = loops_dir or default_loops_dir()
    if folder is None or not (folder / f"{backend}.py").is_file():
        raise InvalidArgumentError(
            f"no hand-written loop for {backend!r} (looked for benchmarks/loops/{backend}.py); run "
            "`d2lx bench` from a d2lx source checkout or pass --loops DIR"
        )
    name = f"_d2lx_bench_loop_{backend}"
    spec = importlib.util.spec_from_file_location(name, folder / f"{backend}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        raise BackendNotInstalledError(
            f"the {backend} loop needs its framework, which could not be imported ({exc}); "
            f"install it with: pip install -r backends/{backend}.txt"
        ) from exc
    return module


def time_loop(loop_mod: ModuleType, w: Workload, data: Any, repeats: int) -> dict[str, Any]:
    """Every variant of the hand-written loop; the fastest is the reference."""
    w0, b0 = initial_params(w.num_inputs)
    X, y = data.X[: w.num_train], data.y[: w.num_train]
    by_variant: dict[str, Any] = {}
    for variant in loop_mod.VARIANTS:
        try:
            loop = loop_mod.Loop(X, y, w.model, LR, w.batch_size, variant=variant)
            rng = np.random.default_rng(SEED)

            def run(loop: Any = loop, rng: np.random.Generator = rng) -> Any:
                return loop.run(w.epochs, w0, b0, rng)

            samples, out = time_repeats(run, repeats)
        except Exception as exc:  # a variant that fails is reported, not fatal
            by_variant[variant] = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
            continue
        by_variant[variant] = {"status": "ok", **summarize(samples, w),
                               "w_max_error": _error(out["w"], out["b"], data),
                               "final_loss": float(out["losses"][-1])}
    return _best(by_variant, "variant")


def _best(by_key: dict[str, Any], key_name: str) -> dict[str, Any]:
    ok = {k: v for k, v in by_key.items() if v.get("status") == "ok"}
    if not ok:
        reasons = "; ".join(f"{k}: {v.get('reason')}" for k, v in by_key.items())
        return {"status": "error", "reason": reasons or "nothing to time", f"by_{key_name}": by_key}
    best = min(ok, key=lambda k: ok[k]["median_s"])
    out = {k: v for k, v in ok[best].items() if k != "samples_s"}
    out.update({"status": "ok", f"best_{key_name}": best, "samples_s": ok[best]["samples_s"],
                f"by_{key_name}": by_key})
    return out


def time_d2lx(ns: ModuleType, w: Workload, data: Any, repeats: int, spe: int) -> dict[str, Any]:
    """``Trainer(steps_per_execution=spe).fit`` on a fresh model per run (data stays on the device)."""
    from d2lx.experiment import build_model

    def run() -> Any:
        model = build_model(ns, w.model, w.num_inputs, LR, SEED)
        trainer = ns.Trainer(max_epochs=w.epochs, steps_per_execution=spe, progress=False)
        trainer.fit(model, data)
        w_hat, b_hat = model.get_w_b()
        return trainer, w_hat, b_hat

    samples, (trainer, w_hat, b_hat) = time_repeats(run, repeats)
    out = {"status": "ok", **summarize(samples, w), "w_max_error": _error(w_hat, b_hat, data),
           "final_loss": float(trainer.history.train_loss[-1])}
    seconds = list(trainer.history.seconds)
    if len(seconds) > 1:  # epochs after the first: no tracing/compilation inside
        out["later_epoch_us_per_step"] = float(np.median(seconds[1:])) / w.steps_per_epoch * 1e6
    return out


def time_d2lx_fused(ns: ModuleType, w: Workload, data: Any, repeats: int,
                    spe_values: Sequence[int]) -> dict[str, Any]:
    by_spe: dict[str, Any] = {}
    for spe in _effective_spe(spe_values, w):
        try:
            by_spe[str(spe)] = time_d2lx(ns, w, data, repeats, spe)
        except Exception as exc:
            by_spe[str(spe)] = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
    return _best(by_spe, "spe")


def _effective_spe(spe_values: Sequence[int], w: Workload) -> list[int]:
    """Values > 1, capped at one epoch's steps (larger ones run the same program)."""
    return sorted({min(s, w.steps_per_epoch) for s in spe_values if s > 1})


# -- Keras 3, in a child process ---------------------------------------------------------
def keras_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in the child (``KERAS_BACKEND`` already set): time ``Model.fit`` per workload and spe."""
    import keras

    results: dict[str, Any] = {"keras_version": keras.__version__, "keras_backend": keras.backend.backend(),
                               "workloads": {}}
    for wd in spec["workloads"]:
        w = Workload(**wd)
        data = make_data(w)
        X, y = data.X[: w.num_train], data.y[: w.num_train]
        w0, b0 = initial_params(w.num_inputs)
        by_spe: dict[str, Any] = {}
        for spe in sorted({1, *_effective_spe(spec["spe_values"], w)}):
            try:
                model = keras.Sequential([keras.Input((w.num_inputs,)), keras.layers.Dense(1)])
                model.compile(optimizer=keras.optimizers.SGD(learning_rate=LR), loss="mse",
                              steps_per_execution=spe)

                def run(model: Any = model, X: Any = X, y: Any = y, w: Workload = w,
                        w0: np.ndarray = w0, b0: np.ndarray = b0) -> Any:
                    model.set_weights([w0, b0])
                    hist = model.fit(X, y, batch_size=w.batch_size, epochs=w.epochs, shuffle=True,
                                     verbose=0)
                    return model.get_weights(), hist.history["loss"][-1]

                samples, ((w_hat, b_hat), loss) = time_repeats(run, spec["repeats"])
                by_spe[str(spe)] = {"status": "ok", **summarize(samples, w),
                                    "w_max_error": _error(w_hat, b_hat, data), "final_loss": float(loss)}
            except Exception as exc:
                by_spe[str(spe)] = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
        results["workloads"][w.name] = _best(by_spe, "spe")
    return results


def run_keras(backend: str, workloads: Sequence[Workload], repeats: int,
              spe_values: Sequence[int], timeout: float = 3600) -> dict[str, Any]:
    """Time Keras 3 ``fit`` with ``KERAS_BACKEND=backend`` in a child process."""
    if backend not in KERAS_BACKENDS:
        return {"status": "skipped", "reason": f"Keras 3 has no {backend} backend"}
    if importlib.util.find_spec("keras") is None:
        return {"status": "skipped", "reason": "keras is not installed in this environment"}
    spec = {"workloads": [_workload_fields(w) for w in workloads if w.model == "concise"],
            "repeats": repeats, "spe_values": list(spe_values)}
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp, "spec.json"), Path(tmp, "out.json")
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.run(
            [sys.executable, "-m", "d2lx.bench", "keras-worker", str(spec_path), str(out_path)],
            env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )
        if proc.returncode != 0 or not out_path.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"status": "error", "reason": f"keras worker exited {proc.returncode}: {' | '.join(tail)}"}
        result: dict[str, Any] = json.loads(out_path.read_text())
    result["status"] = "ok"
    return result


def _workload_fields(w: Workload) -> dict[str, Any]:
    return {k: v for k, v in asdict(w).items()}


# -- ratios and targets ---------------------------------------------------------------------
def ratios(methods: dict[str, Any], copy: dict[str, float] | None, w: Workload) -> dict[str, float | None]:
    """The ratios of medians the targets are stated in (``None`` where a side is missing)."""

    def med(key: str) -> float | None:
        m = methods.get(key, {})
        return float(m["median_s"]) if m.get("status") == "ok" else None

    def div(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    step, fused, loop, keras = med("d2lx_step"), med("d2lx_fused"), med("loop"), med("keras")
    d2lx_best = min((t for t in (step, fused) if t is not None), default=None)
    out: dict[str, float | None] = {
        "step_over_loop": div(step, loop),
        "fused_over_loop": div(fused, loop),
        "loop_over_fused": div(loop, fused),
        "keras_over_fused": div(keras, fused),
        "keras_over_loop": div(keras, loop),
        "bandwidth_fraction": None,
    }
    if copy is not None and d2lx_best is not None:
        out["bandwidth_fraction"] = w.epochs * w.bytes_per_epoch / d2lx_best / 1e9 / copy["gbps"]
    return out


def check_targets(backend: str, results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (target, workload): value, threshold and whether it is met (``None``: not measured)."""
    rows = []
    for t in TARGETS:
        if backend not in t["backends"]:
            continue
        for r in results:
            wl = r["workload"]
            if wl["group"] != t["group"] or (t["group"] == "sweep" and not wl["large"]):
                continue
            if t["value"] == "keras_over_fused" and wl["model"] != "concise":
                continue
            value = r["ratios"].get(t["value"])
            met = None if value is None else (value <= t["threshold"] if t["op"] == "<="
                                              else value >= t["threshold"])
            rows.append({"target": t["name"], "ratio": t["value"], "workload": wl["name"],
                         "value": value, "op": t["op"], "threshold": t["threshold"], "met": met})
    return rows


# -- the run -----------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version(), "numpy": np.__version__}
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def run_backend(
    backend: str,
    workloads: Sequence[Workload],
    *,
    repeats: int = 5,
    spe_values: Sequence[int] = (8, 32, 128),
    keras: bool = True,
    loops_dir: Path | None = None,
    smoke: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time d2lx (step, fused), the hand-written loop and Keras on one backend; return the JSON document."""
    from d2lx import __version__, registry

    say = log or (lambda _msg: None)
    backend = registry.canonical_name(backend)
    loop_mod = load_loop(backend, loops_dir)  # fails early if the framework is missing
    try:
        ns: ModuleType | None = registry.load(backend)
        d2lx_problem = None
    except (ImportError, BackendNotInstalledError) as exc:
        ns, d2lx_problem = None, f"d2lx {backend} adapter unavailable: {type(exc).__name__}: {exc}"
        say(d2lx_problem)
    started = _dt.datetime.now(_dt.timezone.utc)
    results: list[dict[str, Any]] = []
    for w in workloads:
        data = make_data(w)
        say(f"{backend} {w.name}: {w.steps} steps")
        methods: dict[str, Any] = {}
        if ns is not None:
            try:
                methods["d2lx_step"] = time_d2lx(ns, w, data, repeats, 1)
            except Exception as exc:
                methods["d2lx_step"] = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
            methods["d2lx_fused"] = time_d2lx_fused(ns, w, data, repeats, spe_values)
        else:
            methods["d2lx_step"] = methods["d2lx_fused"] = {"status": "skipped", "reason": d2lx_problem}
        methods["loop"] = time_loop(loop_mod, w, data, repeats)
        copy = numpy_copy(data.X[: w.num_train], data.y[: w.num_train], repeats) if w.large else None
        results.append({"workload": w.as_dict(), "methods": methods, "numpy_copy": copy})
        del data
    keras_info: dict[str, Any] = {"status": "skipped", "reason": "--no-keras"}
    if keras:
        if backend in KERAS_BACKENDS:
            say(f"{backend}: Keras 3 fit in a child process (KERAS_BACKEND={backend})")
        keras_info = run_keras(backend, workloads, repeats, spe_values)
    for w, r in zip(workloads, results):
        if w.model != "concise":
            r["methods"]["keras"] = {"status": "skipped", "reason": "Keras has no scratch model"}
        elif keras_info.get("status") == "ok":
            missing = {"status": "error", "reason": "missing from the Keras worker's output"}
            r["methods"]["keras"] = keras_info["workloads"].get(w.name, missing)
        else:
            r["methods"]["keras"] = {"status": keras_info["status"], "reason": keras_info.get("reason")}
        r["ratios"] = ratios(r["methods"], r["numpy_copy"], w)
    doc = {
        "schema": SCHEMA,
        "smoke": smoke,
        "backend": backend,
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round((_dt.datetime.now(_dt.timezone.utc) - started).total_seconds(), 1),
        "machine": machine_info(),
        "versions": {"d2lx": __version__, backend: loop_mod.framework_version(),
                     "keras": keras_info.get("keras_version")},
        "settings": {"repeats": repeats, "warmup": 1, "spe_values": list(spe_values), "lr": LR,
                     "seed": SEED, "keras": keras_info.get("status"),
                     "keras_reason": keras_info.get("reason")},
        "results": results,
    }
    doc["targets"] = check_targets(backend, results)
    return doc


def format_report(doc: dict[str, Any]) -> str:
    """The run as text: one line per workload and method, then the targets."""
    lines = [f"d2lx bench: {doc['backend']} {doc['versions'].get(doc['backend'])} on "
             f"{doc['machine']['cpu']} ({doc['machine']['cores']} cores)"
             + ("  [SMOKE RUN: noisy, not for citation]" if doc.get("smoke") else "")]
    for r in doc["results"]:
        w = r["workload"]
        lines.append(f"  {w['name']} ({w['num_train']} x {w['num_inputs']}, batch {w['batch_size']}, "
                     f"{w['epochs']} epochs, {w['steps']} steps)")
        for key in ("d2lx_step", "d2lx_fused", "loop", "keras"):
            m = r["methods"].get(key, {})
            if m.get("status") != "ok":
                lines.append(f"    {key:<11} {m.get('status', '-')}: {m.get('reason', '')}"[:160])
                continue
            extra = "".join(f" {k.split('_', 1)[1]}={m[k]}" for k in ("best_spe", "best_variant") if k in m)
            lines.append(f"    {key:<11} {m['us_per_step']:10.1f} us/step  "
                         f"{m['examples_per_s']:12.4g} ex/s  IQR [{m['q1_s'] * 1e3:.2f}, "
                         f"{m['q3_s'] * 1e3:.2f}] ms  {m['gbps']:.3g} GB/s{extra}")
        if r.get("numpy_copy"):
            lines.append(f"    numpy copy  {r['numpy_copy']['gbps']:.3g} GB/s")
        shown = {k: f"{v:.3g}" for k, v in r["ratios"].items() if v is not None}
        lines.append(f"    ratios: {shown}")
    lines.append("  targets (reported, not enforced):")
    for t in doc["targets"]:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        lines.append(f"    {t['target']} [{t['workload']}]: {value} {t['op']} {t['threshold']}: {verdict}")
    return "\n".join(lines)


def default_out(backend: str, smoke: bool) -> Path:
    folder = default_loops_dir()
    results = (folder.parent if folder else Path.cwd() / "benchmarks") / "results"
    return results / ("smoke" if smoke else "") / f"{backend}.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default=None,
                   help="the one backend to time (default: $D2LX_BACKEND or torch)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="JSON file to write (default: benchmarks/results/<backend>.json, "
                        "benchmarks/results/smoke/<backend>.json with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 repeats, two small sweep cases (labelled as smoke in the JSON)")
    p.add_argument("--only", choices=("all", "seed", "sweep"), default="all")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per method (default 11 seed, 3 sweep)")
    p.add_argument("--spe", default=None, metavar="N,N,...",
                   help="steps_per_execution values for fused d2lx and Keras (default 8,32,128,1024)")
    p.add_argument("--no-keras", action="store_true", help="skip Keras 3 fit")
    p.add_argument("--loops", default=None, metavar="DIR", help="folder of the hand-written loops")


def main_from_args(args: argparse.Namespace) -> int:
    from d2lx import registry

    backend = registry.canonical_name(args.backend) if args.backend else registry.current_backend_name()
    spe = tuple(int(s) for s in args.spe.split(",")) if args.spe else (8, 32, 128, 1024)
    if any(s < 1 for s in spe):
        raise InvalidArgumentError("--spe values must be >= 1")
    seed_reps = args.repeats or (3 if args.quick else 11)
    sweep_reps = args.repeats or 3
    loops_dir = Path(args.loops) if args.loops else None
    groups: list[tuple[list[Workload], int]] = []
    if args.only in ("all", "seed"):
        groups.append((seed_workloads(), seed_reps))
    if args.only in ("all", "sweep"):
        groups.append((sweep_workloads(QUICK_GRID if args.quick else SWEEP_GRID), sweep_reps))
    docs = [run_backend(backend, wl, repeats=reps, spe_values=spe, keras=not args.no_keras,
                        loops_dir=loops_dir, smoke=args.quick,
                        log=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True))
            for wl, reps in groups]
    doc = docs[0]
    for other in docs[1:]:
        doc["results"] += other["results"]
        doc["targets"] += other["targets"]
        doc["duration_s"] += other["duration_s"]
    doc["settings"]["repeats"] = {"seed": seed_reps, "sweep": sweep_reps}
    out = Path(args.out) if args.out else default_out(backend, args.quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(format_report(doc))
    print(f"wrote {out}")
    return 0


def _main(argv: Sequence[str]) -> int:
    if len(argv) == 3 and argv[0] == "keras-worker":
        spec = json.loads(Path(argv[1]).read_text())
        Path(argv[2]).write_text(json.dumps(keras_worker(spec)))
        return 0
    from d2lx.cli import main

    return main(["bench", *argv])


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
