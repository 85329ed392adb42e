"""Checkpoint files: safetensors, pickle-free, verified on load, written atomically.

Why safetensors: it is the ecosystem's framework-neutral tensor file, and a
checkpoint written on one backend must load on any other (MXNet lives in
another environment). Loading runs no code; a d2lx checkpoint opens with
plain ``safetensors.numpy.load_file``.

Layout: tensors ``model/<name>`` (the model's whole state: parameters,
buffers, batch statistics; the linear models use the fixed names ``w``
``(n, 1)`` and ``b`` ``(1,)``, so they load on any backend),
``optimizer/<name>`` (the optimizer's state) and ``rng/<name>``; the header's
metadata holds ``format``, ``version`` and ``meta``, the run's JSON
(epoch, step, hyperparameters, shuffling state, history...), plus
``sha256``, a digest of the metadata and every tensor, so that a damaged
file is refused rather than loaded with altered numbers.

:func:`load` checks every field and raises :class:`~d2lx.errors.CheckpointError`
for anything else: missing, truncated, foreign or damaged files. Checkpoints
of d2lx 0.1 (``.npz``) still load (linear models only).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from d2lx.checkpoint_v1 import load_npz
from d2lx.errors import CheckpointError
from d2lx.outputs import atomic_write

FORMAT = "d2lx-checkpoint"
VERSION = 2
GROUPS = ("model", "optimizer", "rng")


@dataclass
class Checkpoint:
    """A checkpoint's content, framework-free: three groups of NumPy arrays and the run's JSON."""

    model: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    rng: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The model's arrays (d2lx 0.1's name for them)."""
        return self.model

    @property
    def epoch(self) -> int:
        """Finished epochs: the resumed run starts at this epoch."""
        return int(self.meta["epoch"])

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def jsonable(value: Any) -> Any:
    """Hyperparameters may hold arrays or framework objects: keep what JSON can say."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return repr(value)


def _digest(meta_text: str, tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(meta_text.encode())
    for name in sorted(tensors):
        array = np.array(tensors[name], order="C", copy=False)
        h.update(f"\0{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def save(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically (the old file stays intact if the write fails)."""
    from safetensors.numpy import save_file

    tensors = {f"{group}/{name}": np.array(value, order="C")
               for group in GROUPS for name, value in getattr(ckpt, group).items()}
    meta_text = json.dumps(jsonable(ckpt.meta), allow_nan=True)
    metadata = {"format": FORMAT, "version": str(VERSION), "meta": meta_text,
                "sha256": _digest(meta_text, tensors)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), "checkpoint")


def _refuse(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a usable d2lx checkpoint: {why}; delete it and train again, "
                           "or point to another checkpoint")


def load(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint; anything but a sound d2lx checkpoint is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; check the path, or train without resuming")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path} could not be read ({exc.strerror or exc})") from None
    if raw[:4] == b"PK\x03\x04":
        model, optimizer, old_meta = load_npz(path, raw)
        old = Checkpoint(model=model, optimizer=optimizer, meta=old_meta)
        check_fields(path, old)
        return old
    try:
        from safetensors.numpy import load

        header_len = int.from_bytes(raw[:8], "little") if len(raw) >= 8 else -1
        if header_len <= 0 or header_len > len(raw) - 8:
            raise ValueError("truncated header")
        header = json.loads(raw[8:8 + header_len])
        metadata = header.get("__metadata__") if isinstance(header, dict) else None
        tensors = load(raw)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # safetensors' Rust errors; a Rust panic is a BaseException
        raise CheckpointError(
            f"{path} is truncated or not a d2lx checkpoint ({type(exc).__name__}: {exc}); "
            "delete it and train again, or point to another checkpoint") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a d2lx checkpoint (a safetensors file without the d2lx "
                              "header); point to a file written by Trainer.save_checkpoint")
    version = metadata.get("version")
    if not isinstance(version, str) or not version.isdigit():
        raise _refuse(path, f"its format version {version!r} is not a number")
    if int(version) > VERSION:
        raise CheckpointError(f"{path} was written by a newer d2lx (checkpoint format {version}, this d2lx "
                              f"reads up to {VERSION}); upgrade d2lx")
    meta_text = metadata.get("meta")
    if not isinstance(meta_text, str) or metadata.get("sha256") != _digest(meta_text, tensors):
        raise _refuse(path, "its content does not match its checksum (the file is damaged)")
    try:
        meta = json.loads(meta_text)
    except ValueError:
        raise _refuse(path, "its run description is not valid JSON") from None
    groups: dict[str, dict[str, np.ndarray]] = {group: {} for group in GROUPS}
    for key, value in tensors.items():
        group, _, name = key.partition("/")
        if group not in groups or not name:
            raise _refuse(path, f"it holds an unknown tensor {key!r}")
        groups[group][name] = value
    ckpt = Checkpoint(model=groups["model"], optimizer=groups["optimizer"], rng=groups["rng"], meta=meta)
    check_fields(path, ckpt)
    return ckpt


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_fields(path: Path, ckpt: Checkpoint) -> None:
    """Refuse a checkpoint whose run description or arrays are not what d2lx writes."""
    meta = ckpt.meta
    if not isinstance(meta, dict):
        raise _refuse(path, "its run description is not a JSON object")
    for name in ("epoch", "step", "val_step"):
        if not _is_int(meta.get(name)):
            raise _refuse(path, f"its {name!r} is {meta.get(name)!r}, not a count >= 0")
    for name in ("backend", "model"):
        if not isinstance(meta.get(name), str):
            raise _refuse(path, f"its {name!r} is {meta.get(name)!r}, not a name")
    for name in ("model_hparams", "data_hparams", "trainer_hparams"):
        if not isinstance(meta.get(name, {}), dict):
            raise _refuse(path, f"its {name!r} is not a JSON object")
    history = meta.get("history")
    keys = ("epoch", "train_loss", "val_loss", "seconds")
    if (not isinstance(history, dict) or any(not isinstance(history.get(k), list) for k in keys)
            or len({len(history[k]) for k in keys}) != 1 or len(history["epoch"]) != meta["epoch"]
            or not all(_is_int(e) for e in history["epoch"])
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       for k in keys[1:] for v in history[k])):
        raise _refuse(path, "its history is not one entry per finished epoch")
    rng = meta.get("shuffle_rng")
    if not (isinstance(rng, dict) and isinstance(rng.get("bit_generator"), str)
            and isinstance(rng.get("state"), dict)):
        raise _refuse(path, "its shuffling state is missing or malformed")
    if not ckpt.model:
        raise _refuse(path, "it holds no model parameters")
    for group in GROUPS:
        for name, array in getattr(ckpt, group).items():
            if group != "rng" and array.dtype.kind == "f" and not np.isfinite(array).all():
                raise _refuse(path, f"its {group} array {name!r} holds NaN or inf, which training never "
                                    "saves (the file was altered)")


class ModelCheckpoint:
    """Callback that saves the trainer's whole state to ``path`` after every epoch.

    ``Trainer(callbacks=[ModelCheckpoint("run.safetensors")])``; resume with
    ``trainer.fit(model, data, ckpt_path="run.safetensors")``. The path is
    checked when the callback is made (not after the first epoch), and while
    a fit runs the callback owns it: a second writer to the same file, in
    this process or another, is refused instead of silently overwriting the
    first one's checkpoints. The file is free again when the fit ends.
    """

    def __init__(self, path: str | Path) -> None:
        from d2lx.outputs import check_output_path

        self.path = check_output_path("checkpoint", path)
        self._lock: Any = None

    def __call__(self, trainer: Any) -> None:
        if getattr(trainer, "is_global_zero", True):  # one writer in multi-process runs
            if self._lock is None:
                self._lock = _PathLock(self.path)
                self._lock.remove_leftovers()
            trainer.save_checkpoint(self.path)

    def on_fit_end(self, trainer: Any) -> None:
        """The fit is over (finished or failed): another run may write to the path now."""
        self.release()

    def release(self) -> None:
        """Let another writer use the path (the trainer calls it when ``fit`` ends)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None


class _PathLock:
    """An exclusive advisory lock on ``.<name>.lock`` beside a checkpoint (freed if the process dies)."""

    def __init__(self, path: Path) -> None:
        import fcntl
        import os
        import weakref

        self.path = path
        self.file = path.parent / f".{path.name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise CheckpointError(
                f"another run is already writing checkpoints to {path}; give each run its own path "
                "(two writers would overwrite each other's checkpoints)") from None
        self._finalizer = weakref.finalize(self, _unlock, fd, self.file)

    def remove_leftovers(self) -> None:
        """Delete the temporary files of writers killed mid-save (this lock's holder is the only writer)."""
        import contextlib

        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()

    def release(self) -> None:
        self._finalizer()


def _unlock(fd: int, file: Path) -> None:
    import contextlib
    import os

    with contextlib.suppress(OSError):
        file.unlink()
    with contextlib.suppress(OSError):
        os.close(fd)
