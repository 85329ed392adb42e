"""A trainer's whole state into a checkpoint and back: saving, resuming, and what must match.

:func:`save_trainer` writes everything that determines the rest of a run:
the model's state, the optimizer's, the epoch and step reached, the data
module's shuffling stream, the framework's and Python's random generators
(a torch ``DataLoader`` shuffles with torch's, Gluon's with NumPy's), the
hyperparameters and the history. :func:`restore` puts it back into a
prepared trainer, so the resumed run ends where an uninterrupted run ends
(bit for bit on the same backend and device).

Resuming is for continuing *the same* experiment: a checkpoint whose model,
data or settings differ from this run's is refused with the differences
named. Training further than the checkpoint's run planned (a larger
``max_epochs``) is allowed and reported in ``trainer.resumed``.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from d2lx import checkpoint
from d2lx.batches import Batches
from d2lx.errors import CheckpointError, InvalidArgumentError
from d2lx.linear import LinearModel
from d2lx.loader import ArrayLoader

#: Trainer settings that change the experiment (max_epochs may grow; fusing and devices do not).
TRAINER_KEYS = ("gradient_clip_val",)


def data_fingerprint(trainer: Any) -> dict[str, Any]:
    """What identifies the training data cheaply: sizes and shapes (the seed is compared apart)."""
    out: dict[str, Any] = {}
    for split, loader in (("train", trainer.train_dataloader), ("val", trainer.val_dataloader)):
        if loader is None:
            out[split] = None
        elif isinstance(loader, ArrayLoader):
            out[split] = {"examples": loader.num_examples, "batch_size": loader.batch_size,
                          "shapes": [list(t.shape[1:]) for t in loader.tensors]}
        else:
            out[split] = {"batches": loader.known_length()}
    return out


def save_trainer(trainer: Any, path: str | Path) -> Path:
    """Write ``trainer``'s run to ``path`` (see the module docstring)."""
    model, data = trainer.model, trainer.data
    if model is None or data is None:
        raise InvalidArgumentError("nothing to save yet: call fit(model, data) first")
    linear = isinstance(model, LinearModel)
    shuffle = data.shuffle_rng  # also fixes data.seed for a module made without super().__init__()
    state = dict(zip(("w", "b"), model.get_w_b())) if linear else trainer.model_state()
    legacy: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    rng = {**trainer.rng_state(), "numpy_mt19937": np.asarray(legacy[1], dtype=np.uint32)}
    meta = {
        "backend": trainer.backend_name,
        "model": type(model).__name__,
        "linear": linear,
        "model_hparams": getattr(model, "hparams", {}),
        "data_hparams": getattr(data, "hparams", {}),
        "trainer_hparams": trainer.hparams,
        "data": data_fingerprint(trainer),
        "epoch": trainer.epochs_done,
        "step": trainer.train_batch_idx,
        "val_step": trainer.val_batch_idx,
        "seed": getattr(data, "seed", None),
        "shuffle_rng": shuffle.bit_generator.state,
        "numpy_rng": [legacy[0], int(legacy[2]), int(legacy[3]), float(legacy[4])],
        "python_rng": jsonable_random_state(),
        "history": trainer.history.as_dict(),
        "d2lx_version": _version(),
    }
    ckpt = checkpoint.Checkpoint(model=state, optimizer=trainer.optimizer_state(), rng=rng, meta=meta)
    return checkpoint.save(path, ckpt)


def jsonable_random_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _differences(ckpt: checkpoint.Checkpoint, trainer: Any) -> list[str]:
    """What differs between the checkpoint's run and this one, in words (empty: the same experiment)."""
    meta, model, data = ckpt.meta, trainer.model, trainer.data
    assert data.shuffle_rng is not None  # fixes data.seed for a module made without super().__init__()
    saved_trainer = meta.get("trainer_hparams", {})
    pairs = [
        ("model", meta.get("model_hparams", {}), checkpoint.jsonable(getattr(model, "hparams", {}))),
        ("data", meta.get("data_hparams", {}), checkpoint.jsonable(getattr(data, "hparams", {}))),
        ("trainer", {k: saved_trainer.get(k) for k in TRAINER_KEYS if k in saved_trainer},
         {k: trainer.hparams.get(k) for k in TRAINER_KEYS if k in saved_trainer}),
    ]
    out = []
    for what, saved, now in pairs:
        for key in sorted(set(saved) | set(now)):
            if key in ("plot_train_per_epoch", "plot_valid_per_epoch", "root", "num_workers"):
                continue
            if saved.get(key) != now.get(key):
                out.append(f"{what} {key}: {saved.get(key)!r} in the checkpoint, {now.get(key)!r} now")
    if meta.get("seed") != getattr(data, "seed", None):
        out.append(f"data seed: {meta.get('seed')!r} in the checkpoint, {getattr(data, 'seed', None)!r} now")
    saved_data, now_data = meta.get("data"), checkpoint.jsonable(data_fingerprint(trainer))
    if isinstance(saved_data, dict):
        for split in ("train", "val"):
            a, b = saved_data.get(split), now_data.get(split)
            uncounted = None in (a.get("batches", 0), b.get("batches", 0)) if isinstance(a, dict) and \
                isinstance(b, dict) else False
            if uncounted:
                continue  # a loader without len() is counted only once it has run an epoch
            if a != b:
                out.append(f"{split} data: {a} in the checkpoint, {b} now")
    return out


def restore(trainer: Any, path: str | Path) -> None:
    """Load the checkpoint at ``path`` into a prepared ``trainer`` (model placed, optimizer made)."""
    ckpt = checkpoint.load(path)
    meta, model = ckpt.meta, trainer.model
    kind = type(model).__name__
    if meta["model"] != kind:
        raise CheckpointError(f"{path} holds a {meta['model']} but the model is a {kind}; resume with a "
                              f"{meta['model']} or start without ckpt_path")
    differences = _differences(ckpt, trainer)
    if differences:
        raise CheckpointError(f"{path} was written by another experiment ({'; '.join(differences)}); resume "
                              "with the same settings, or start without ckpt_path")
    if ckpt.epoch > trainer.max_epochs:
        raise CheckpointError(f"{path} has finished {ckpt.epoch} epochs but this trainer stops at "
                              f"max_epochs={trainer.max_epochs}; pass max_epochs >= {ckpt.epoch}")
    if meta.get("linear", True) and isinstance(model, LinearModel):
        if sorted(ckpt.model) != ["b", "w"]:
            raise CheckpointError(f"{path} holds {sorted(ckpt.model)}, not a linear model's w and b")
        w_now, _ = model.get_w_b()
        if ckpt.model["w"].reshape(-1, 1).shape != w_now.shape:
            raise CheckpointError(f"{path} holds w of shape {ckpt.model['w'].shape} but the model's is "
                                  f"{w_now.shape}; use data and model of the same width")
        model.set_w_b(ckpt.model["w"], ckpt.model["b"])
    else:
        trainer.load_model_state(ckpt.model)
    _restore_optimizer(trainer, ckpt, path)
    _restore_rngs(trainer, ckpt)
    for loader in (trainer.train_dataloader, trainer.val_dataloader):
        if isinstance(loader, Batches):
            loader.reset()  # its first epoch must shuffle with the restored generators
    data = trainer.data
    try:
        data.shuffle_rng.bit_generator.state = meta["shuffle_rng"]
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path} has a shuffling state this NumPy cannot use ({exc})") from None
    trainer.epochs_done = trainer.epoch = ckpt.epoch
    trainer.train_batch_idx = ckpt.step
    trainer.val_batch_idx = int(meta["val_step"])
    saved = meta["history"]
    for i in range(len(saved["epoch"])):
        trainer.history.append(saved["epoch"][i], float(saved["train_loss"][i]), float(saved["val_loss"][i]),
                               float(saved["seconds"][i]))
    planned = meta.get("trainer_hparams", {}).get("max_epochs")
    trainer.resumed = {"path": str(path), "epoch": ckpt.epoch, "planned_epochs": planned,
                       "max_epochs": trainer.max_epochs}


def _restore_optimizer(trainer: Any, ckpt: checkpoint.Checkpoint, path: str | Path) -> None:
    writer = ckpt.meta["backend"]
    if ckpt.optimizer and writer != trainer.backend_name:
        # Optimizer state is the writer framework's own layout (Keras' SGD keeps
        # an iteration counter, optax's sgd nothing...): it cannot be mapped.
        warnings.warn(
            f"{path} was written by the {writer} backend; its optimizer state "
            f"({', '.join(sorted(ckpt.optimizer))}) does not apply to {trainer.backend_name}'s optimizer "
            "and is not loaded (parameters, epoch, step, shuffling and history are). Plain SGD keeps no "
            "state that changes the updates; an optimizer with momentum restarts it",
            UserWarning, stacklevel=4)
        return
    trainer.load_optimizer_state(ckpt.optimizer)


def _restore_rngs(trainer: Any, ckpt: checkpoint.Checkpoint) -> None:
    """Random generators a loader or a model may draw from: the framework's, NumPy's, Python's."""
    meta, rng = ckpt.meta, dict(ckpt.rng)
    legacy = rng.pop("numpy_mt19937", None)
    numpy_rng = meta.get("numpy_rng")
    if legacy is not None and isinstance(numpy_rng, list) and len(numpy_rng) == 4:
        try:
            np.random.set_state((numpy_rng[0], legacy, int(numpy_rng[1]), int(numpy_rng[2]),
                                 float(numpy_rng[3])))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"the checkpoint's NumPy random state is malformed ({exc})") from None
    python_rng = meta.get("python_rng")
    if python_rng is not None:
        try:
            random.setstate((python_rng[0], tuple(python_rng[1]), python_rng[2]))
        except (TypeError, ValueError, IndexError) as exc:
            raise CheckpointError(f"the checkpoint's Python random state is malformed ({exc})") from None
    if meta["backend"] == trainer.backend_name:
        trainer.load_rng_state(rng)


def _version() -> str:
    from d2lx import __version__

    return __version__
