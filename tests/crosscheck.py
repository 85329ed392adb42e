"""Cross-backend checkpoint check, across separate environments.

MXNet cannot share an environment with JAX or TensorFlow, so "a checkpoint
written on one backend loads on any other" is checked through files:

    python tests/crosscheck.py write DIR   # in each backend's environment
    python tests/crosscheck.py read DIR    # then in each backend's environment

``write`` trains both models for one epoch, saves the checkpoint, the
predictions of the saved model on a fixed probe batch, and the parameters
after resuming to three epochs. ``read`` loads every *other* backend's
checkpoint into a fresh model of its own backend and checks (1) the same
predictions and (2) that resuming to three epochs ends at the writer's
parameters. The active backend is ``$D2LX_BACKEND``. ``nox -s crosscheck``
runs both phases over every backend environment.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from d2lx import checkpoint, registry
from d2lx.experiment import build_model, run_fit

MODELS = ("scratch", "concise")
PROBE = np.random.default_rng(123).standard_normal((16, 2)).astype(np.float32)


def write(folder: Path) -> int:
    name = registry.current_backend_name()
    ns = registry.load(name)
    folder.mkdir(parents=True, exist_ok=True)
    for model in MODELS:
        ckpt = folder / f"{name}-{model}.npz"
        run_fit(name, model, epochs=1, seed=0, progress=False, checkpoint=str(ckpt))
        net = build_model(ns, model, 2, 0.03, 1)
        saved = checkpoint.load(ckpt)
        net.set_w_b(saved.params["w"], saved.params["b"])
        np.save(folder / f"{name}-{model}.pred.npy", net.predict(PROBE))
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "c.npz"
            shutil.copy(ckpt, copy)
            final = run_fit(name, model, epochs=3, seed=0, progress=False, checkpoint=str(copy), resume=True)
        np.save(folder / f"{name}-{model}.final.npy", np.array([*final.w, final.b]))
        print(f"{name}: wrote {ckpt.name}")
    return 0


def read(folder: Path) -> int:
    name = registry.current_backend_name()
    ns = registry.load(name)
    passed = failed = 0
    for ckpt in sorted(folder.glob("*.npz")):
        writer, model = ckpt.stem.split("-")
        if writer == name:
            continue
        saved = checkpoint.load(ckpt)
        net = build_model(ns, model, 2, 0.03, 1)
        net.set_w_b(saved.params["w"], saved.params["b"])
        pred = net.predict(PROBE)
        want = np.load(folder / f"{writer}-{model}.pred.npy")
        ok_pred = np.allclose(pred, want, rtol=1e-5, atol=1e-5)
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "c.npz"
            shutil.copy(ckpt, copy)
            final = run_fit(name, model, epochs=3, seed=0, progress=False, checkpoint=str(copy), resume=True)
        want_final = np.load(folder / f"{writer}-{model}.final.npy")
        ok_final = np.allclose(np.array([*final.w, final.b]), want_final, rtol=1e-4, atol=1e-5)
        for what, ok in (("predictions", ok_pred), ("resumed run", ok_final)):
            print(f"{'ok  ' if ok else 'FAIL'} {writer} -> {name} {model}: {what}")
            passed, failed = passed + ok, failed + (not ok)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "read"):
        sys.exit(__doc__)
    sys.exit({"write": write, "read": read}[sys.argv[1]](Path(sys.argv[2])))
