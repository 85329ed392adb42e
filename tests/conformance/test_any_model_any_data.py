"""Conformance: a reader's own model trains on the framework's own loader, and checkpoints resume exactly.

"Any model, any data" (issue 14): an MLP written with the framework's layers
and optimizer (``recipes.mlp``) trains through d2lx's loop on the loader a
reader would use on that framework (``recipes.own_loader``: a torch
``DataLoader``, ``tf.data``, a Gluon ``DataLoader``, a list of NumPy
batches), and a checkpoint taken halfway resumes to the very same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import d2lx
from conformance import recipes
from d2lx.checkpoint import ModelCheckpoint
from d2lx.data import DataModule


class OwnLoaderData(DataModule):
    """A d2l-style data module that returns the framework's own loaders (and skips super().__init__)."""

    def __init__(self, backend: str, batch_size: int = 32, shuffle: bool = True) -> None:
        self.backend, self.batch_size, self.shuffle = backend, batch_size, shuffle
        self.X, self.y, self.X_val, self.y_val = recipes.regression_task()

    def get_dataloader(self, train: bool) -> Any:
        X, y = (self.X, self.y) if train else (self.X_val, self.y_val)
        return recipes.own_loader(self.backend, X, y, self.batch_size, shuffle=train and self.shuffle)


def test_a_reader_mlp_trains_on_the_frameworks_own_loader(d2l: Any, backend_name: str) -> None:
    recipes.seed_framework(backend_name, 0)
    data = OwnLoaderData(backend_name)
    trainer = d2l.Trainer(max_epochs=6, progress=False)
    history = trainer.fit(recipes.mlp(d2l, lr=0.01), data)
    assert trainer.num_train_batches == 16 and trainer.train_batch_idx == 6 * 16
    assert trainer.num_val_batches == 8 and trainer.val_batch_idx == 6 * 8
    spread = float(np.var(data.y_val))  # the loss of always predicting the mean
    assert history.val_loss[-1] < 0.2 * spread, history
    assert history.train_loss[-1] < history.train_loss[0]
    lines = trainer.model.board.lines()
    assert len(lines["train_loss"][0]) == 6 * 2 and len(lines["val_loss"][0]) == 6  # d2l's board


def _state(trainer: Any) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in trainer.model_state().items()}


def test_an_mlp_checkpointed_halfway_resumes_bit_identical(d2l: Any, backend_name: str,
                                                           tmp_path: Path) -> None:
    # tf.data reshuffles per iteration of one Dataset object; a resumed run has a new one, so its loader
    # is left unshuffled here. The others shuffle with generators the checkpoint saves.
    shuffle = backend_name != "tensorflow"

    def run(epochs: int, **fit: Any) -> tuple[Any, Any]:
        recipes.seed_framework(backend_name, 0)
        model = recipes.mlp(d2l, lr=0.01)
        callbacks = [ModelCheckpoint(tmp_path / "half.safetensors")] if epochs == 2 else []
        trainer = d2l.Trainer(max_epochs=epochs, progress=False, callbacks=callbacks)
        history = trainer.fit(model, OwnLoaderData(backend_name, shuffle=shuffle), **fit)
        return trainer, history

    straight, straight_history = run(4)
    run(2)
    resumed, resumed_history = run(4, ckpt_path=tmp_path / "half.safetensors")
    assert resumed.resumed is not None and resumed.resumed["epoch"] == 2
    assert resumed.train_batch_idx == straight.train_batch_idx == 4 * 16
    want, got = _state(straight), _state(resumed)
    assert sorted(got) == sorted(want) and want
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    np.testing.assert_array_equal(resumed_history.train_loss[2:], straight_history.train_loss[2:])
    assert resumed_history.epoch == [0, 1, 2, 3]


def test_any_reiterable_of_numpy_batches_trains_and_len_is_counted(d2l: Any, backend_name: str) -> None:
    X, y, X_val, y_val = recipes.regression_task(n=100, num_val=30)

    class Generated(DataModule):
        batch_size = 25

        def get_dataloader(self, train: bool) -> Any:  # a generator: d2lx asks for a new one each epoch
            Xs, ys = (X, y) if train else (X_val, y_val)
            for i in range(0, len(Xs), self.batch_size):
                yield Xs[i:i + self.batch_size].astype(np.float64), ys[i:i + self.batch_size]

    trainer = d2l.Trainer(max_epochs=3, progress=False)
    history = trainer.fit(d2l.LinearRegression(lr=0.05), Generated())
    assert trainer.train_batch_idx == 3 * 4 and trainer.num_train_batches == 4
    assert trainer.val_batch_idx == 3 * 2 and len(history) == 3
    assert history.train_loss[-1] < history.train_loss[0]


def test_a_run_on_a_generator_resumes_like_any_other(d2l: Any, tmp_path: Path) -> None:
    X, y, X_val, y_val = recipes.regression_task(n=100, num_val=30)

    class Generated(DataModule):  # no len(): the batches are counted as they come
        batch_size = 25

        def get_dataloader(self, train: bool) -> Any:
            Xs, ys = (X, y) if train else (X_val, y_val)
            for i in range(0, len(Xs), self.batch_size):
                yield Xs[i:i + self.batch_size], ys[i:i + self.batch_size]

    path = tmp_path / "gen.safetensors"
    straight = d2l.LinearRegression(lr=0.05)
    d2l.Trainer(max_epochs=3, progress=False).fit(straight, Generated())
    d2l.Trainer(max_epochs=1, progress=False, callbacks=[ModelCheckpoint(path)]).fit(
        d2l.LinearRegression(lr=0.05), Generated())
    resumed = d2l.LinearRegression(lr=0.05)
    trainer = d2l.Trainer(max_epochs=3, progress=False)
    trainer.fit(resumed, Generated(), ckpt_path=path)
    assert trainer.train_batch_idx == 3 * 4
    np.testing.assert_array_equal(resumed.get_w_b()[0], straight.get_w_b()[0])


def test_a_batch_that_is_not_a_tuple_is_refused(d2l: Any) -> None:
    class Bad(DataModule):
        batch_size = 4

        def get_dataloader(self, train: bool) -> Any:
            return [np.ones((4, 2), np.float32)] * 3  # X only: no targets

    words = r"training batch 0 is a ndarray, not a tuple \(X, \.\.\., y\)"
    with pytest.raises(d2lx.ArgumentTypeError, match=words):
        d2l.Trainer(max_epochs=1, progress=False).fit(d2l.LinearRegression(lr=0.1), Bad())


def test_an_empty_loader_is_refused(d2l: Any) -> None:
    class Empty(DataModule):
        batch_size = 4

        def get_dataloader(self, train: bool) -> Any:
            return []

    with pytest.raises(d2lx.InvalidArgumentError, match="the training loader yielded no batches"):
        d2l.Trainer(max_epochs=1, progress=False).fit(d2l.LinearRegression(lr=0.1), Empty())


def test_a_nan_in_a_foreign_batch_is_named_as_data(d2l: Any) -> None:
    X, y, _, _ = recipes.regression_task(n=64, num_val=0)
    X[40, 1] = np.nan  # in the second batch

    class Dirty(DataModule):
        batch_size = 32

        def get_dataloader(self, train: bool) -> Any:
            return [(X[:32], y[:32]), (X[32:], y[32:])] if train else None

    model = d2l.LinearRegression(lr=0.01)
    with pytest.raises(d2lx.NonFiniteDataError, match=r"training batch 1 of epoch 0 .* contains NaN or inf"):
        d2l.Trainer(max_epochs=2, progress=False).fit(model, Dirty())
    assert np.isfinite(model.get_w_b()[0]).all()


class _ListData(DataModule):
    """The same examples, unshuffled, as d2lx's own loader or as a list of NumPy batches."""

    def __init__(self, X: np.ndarray, y: np.ndarray, own: bool) -> None:
        self.X, self.y, self.own, self.batch_size = X, y, own, 16

    def get_dataloader(self, train: bool) -> Any:
        if self.own:  # train=False: d2lx's loader without shuffling, so both kinds see the same order
            return self.get_tensorloader((self.X, self.y), train=False)
        return [(self.X[i:i + 16], self.y[i:i + 16]) for i in range(0, len(self.X), 16)]


@pytest.mark.parametrize("own", [True, False], ids=["d2lx-loader", "list-of-numpy-batches"])
def test_a_readers_prepare_batch_applies_once_per_batch(d2l: Any, own: bool) -> None:
    # d2l's Trainer.prepare_batch is a hook a reader may override; a compiled step (JAX) that applies
    # it itself must not get batches the loop has already prepared.
    X, y, _, _ = recipes.regression_task(n=64, num_val=0)

    class Doubling(d2l.Trainer):  # type: ignore[name-defined,misc]
        def prepare_batch(self, batch: Any) -> Any:
            batch = super().prepare_batch(batch)  # d2lx's: host arrays onto the device
            return (batch[0] * 2, *batch[1:])

    def fit(trainer_class: Any, data: DataModule) -> np.ndarray:
        model = d2l.LinearRegression(lr=0.03, seed=0)
        trainer_class(max_epochs=2, progress=False).fit(model, data)
        w, b = model.get_w_b()
        return np.concatenate([np.asarray(w).reshape(-1), np.asarray(b).reshape(-1)])

    got = fit(Doubling, _ListData(X, y, own))
    want = fit(d2l.Trainer, _ListData(2 * X, y, own=True))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
