"""Framework-free checkpoints: one ``.npz`` file, written atomically.

Why ``.npz`` and not each framework's format: a checkpoint written on one
backend must load on any other (MXNet lives in a separate environment), so the
file holds only NumPy arrays and one JSON document, and is read with
``allow_pickle=False`` (no code runs when a file is loaded).

Contents: the parameters (``w``, ``b`` in d2lx's layout), the optimizer's
state, the epoch and step reached, the shuffling RNG's state, the
hyperparameters of model, data and trainer, and the history so far. Resuming
from it continues the exact same run.

Writes go to a temporary file in the same folder, are flushed to disk, and
replace the target with :func:`os.replace`, which is atomic: a run killed
mid-save leaves the previous checkpoint intact, never a half-written one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from d2lx.errors import CheckpointError

FORMAT = "d2lx-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """The content of a checkpoint file, framework-free."""

    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        """Number of finished epochs (the next run starts at this epoch)."""
        return int(self.meta["epoch"])

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def _jsonable(value: Any) -> Any:
    """Hyperparameters may hold arrays or framework objects: keep what JSON can say."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return repr(value)


def save(path: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` to ``path`` atomically and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "__format__": np.array(FORMAT),
        "__version__": np.array(VERSION),
        "__meta__": np.array(json.dumps(_jsonable(checkpoint.meta))),
    }
    for name, value in checkpoint.params.items():
        arrays[f"param/{name}"] = np.asarray(value)
    for name, value in checkpoint.optimizer.items():
        arrays[f"optim/{name}"] = np.asarray(value)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return path


def load(path: str | Path) -> Checkpoint:
    """Read a checkpoint; refuse missing, truncated or foreign files with :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; check the path, or train without resuming")
    raw = path.read_bytes()
    if not zipfile.is_zipfile(io.BytesIO(raw)):
        raise CheckpointError(
            f"{path} is truncated or not a d2lx checkpoint (not a readable .npz archive); "
            "delete it and train again, or point to another checkpoint"
        )
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            files = {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as exc:
        raise CheckpointError(
            f"{path} is truncated or not a d2lx checkpoint ({type(exc).__name__}: {exc}); "
            "delete it and train again, or point to another checkpoint"
        ) from None
    if "__format__" not in files or str(files["__format__"]) != FORMAT:
        raise CheckpointError(
            f"{path} is not a d2lx checkpoint (an .npz without the d2lx header); "
            "point to a file written by Trainer.save_checkpoint"
        )
    version = int(files["__version__"])
    if version > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer d2lx (checkpoint format {version}, this d2lx "
            f"reads up to {VERSION}); upgrade d2lx"
        )
    meta = json.loads(str(files["__meta__"]))
    params = {k.split("/", 1)[1]: v for k, v in files.items() if k.startswith("param/")}
    optimizer = {k.split("/", 1)[1]: v for k, v in files.items() if k.startswith("optim/")}
    for required in ("w", "b"):
        if required not in params:
            raise CheckpointError(f"{path} has no parameter {required!r}; it is incomplete")
    return Checkpoint(params=params, optimizer=optimizer, meta=meta)


class ModelCheckpoint:
    """Callback that saves the trainer's state to ``path`` after every epoch.

    ``Trainer(callbacks=[ModelCheckpoint("run.npz")])``; resume with
    ``trainer.fit(model, data, ckpt_path="run.npz")``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __call__(self, trainer: Any) -> None:
        if getattr(trainer, "is_global_zero", True):  # one writer in multi-process runs
            trainer.save_checkpoint(self.path)
