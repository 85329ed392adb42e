"""Keras 3 ``Model.fit``, timed in a child process: ``python -m benchmarks.keras_worker SPEC OUT``.

Why a child: Keras 3 picks its backend (``KERAS_BACKEND``) once, at import,
and its TensorFlow backend would also load TensorFlow into a torch or JAX
run. The child rebuilds each workload's data from the same seeded draw and
starts from the same initial parameters as d2lx and the hand loop, and fits
with ``validation_data`` so that it validates every epoch like they do.
The model is compiled once per ``steps_per_execution`` and its weights reset
before every run: Keras' steady state. The best ``steps_per_execution`` is kept.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.workloads import Workload, lr_of

#: Backends Keras 3 runs on; MXNet has none.
KERAS_BACKENDS = ("jax", "tensorflow", "torch")
ROOT = Path(__file__).resolve().parents[1]
PARAM_NAMES = {"mlp": ("W1", "b1", "W2", "b2"), "linear": ("w", "b")}


def _keras_model(keras: Any, w: Workload, spe: int) -> Any:
    """``Sequential`` of Keras' ``Dense`` layers: the linear model or the MLP, SGD on the MSE."""
    layers = [keras.Input((w.num_inputs,))]
    if w.model == "mlp":
        layers += [keras.layers.Dense(w.hidden, activation="relu"), keras.layers.Dense(1)]
    else:
        layers += [keras.layers.Dense(1)]
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr_of(w)), loss="mse", steps_per_execution=spe)
    return model


def _time_fit(keras: Any, w: Workload, data: Any, spe: int, repeats: int) -> dict[str, Any]:
    """``fit`` of one compiled model, its weights reset to the shared start before every run."""
    from benchmarks.methods import quality
    from benchmarks.timing import summarize, time_repeats
    from benchmarks.workloads import initial_params, splits

    X, y, X_val, y_val = splits(data, w)
    names = PARAM_NAMES["mlp" if w.model == "mlp" else "linear"]
    init = initial_params(w)
    weights = [init[k] for k in names]
    model = _keras_model(keras, w, spe)

    def run() -> Any:
        model.set_weights(weights)
        hist = model.fit(X, y, batch_size=w.batch_size, epochs=w.epochs, shuffle=True,
                         validation_data=(X_val, y_val), validation_batch_size=w.batch_size, verbose=0)
        return model.get_weights(), hist.history

    samples, (trained, hist), warm = time_repeats(run, repeats)
    return {"status": "ok", **summarize(samples, w, warm),
            **quality(dict(zip(names, trained)), hist["loss"], hist["val_loss"], data)}


def keras_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in the child (``KERAS_BACKEND`` already set): every workload of ``spec``, every spe."""
    import keras

    from benchmarks.methods import effective_spe
    from benchmarks.timing import best_of, error
    from benchmarks.workloads import make_data

    results: dict[str, Any] = {"keras_version": keras.__version__, "keras_backend": keras.backend.backend(),
                               "workloads": {}}
    for wd in spec["workloads"]:
        w = Workload.from_dict(wd)
        data = make_data(w)
        by_spe: dict[str, Any] = {}
        for spe in sorted({1, *effective_spe(spec["spe_values"], w)}):
            try:
                by_spe[str(spe)] = _time_fit(keras, w, data, spe, spec["repeats"][w.group])
            except Exception as exc:  # reported, not fatal
                by_spe[str(spe)] = error(exc)
        results["workloads"][w.name] = best_of(by_spe, "spe")
    return results


def run_keras(backend: str, workloads: Sequence[Any], repeats: dict[str, int], spe_values: Sequence[int],
              timeout: float = 3600) -> dict[str, Any]:
    """Time Keras 3 ``fit`` with ``KERAS_BACKEND=backend`` in a child process, for ``workloads``."""
    if backend not in KERAS_BACKENDS:
        return {"status": "skipped", "reason": f"Keras 3 has no {backend} backend"}
    if importlib.util.find_spec("keras") is None:
        return {"status": "skipped", "reason": "keras is not installed in this environment"}
    spec = {"workloads": [w.as_dict() for w in workloads], "repeats": repeats, "spe_values": list(spe_values)}
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp, "spec.json"), Path(tmp, "out.json")
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
               "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.keras_worker", str(spec_path), str(out_path)],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"status": "error", "reason": f"keras worker ran past {timeout:.0f} s"}
        if proc.returncode != 0 or not out_path.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"status": "error", "reason": f"keras worker exited {proc.returncode}: {' | '.join(tail)}"}
        result: dict[str, Any] = json.loads(out_path.read_text())
    result["status"] = "ok"
    return result


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m benchmarks.keras_worker SPEC.json OUT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(keras_worker(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
