"""MXNet's late guard (``d2lx.guard.LateGuard``): a refused update lands, is read a step later, and is undone.

The eager guard never applies a step whose loss is not finite; the late
guard applies it, reads its loss once the next step is queued, and puts the
parameters, the optimizer's state and its update counts back. These tests
run the same diverging fit under both guards and require the same error and
the same model, gradients (the refused step's) and optimizer afterwards,
bit for bit: with a stateless SGD,
momentum, Adam (state made on the first update), and a learning-rate
schedule (which reads the update counts); with the refused step first in a
fit, in the middle of an epoch, and last in an epoch (judged at its end).
Skipped where MXNet is not installed.
"""

from __future__ import annotations

from typing import Any

import numpy as onp
import pytest

mx = pytest.importorskip("mxnet")


from mxnet_readers import GluonNet, ReaderSGD  # noqa: E402

import d2lx  # noqa: E402
from d2lx import registry  # noqa: E402
from d2lx.backends.mxnet import step as mxnet_step  # noqa: E402
from d2lx.backends.mxnet.models import SGD  # noqa: E402
from d2lx.backends.mxnet.trainer import _flatten as flatten_state  # noqa: E402
from d2lx.data import DataModule  # noqa: E402
from d2lx.guard import EagerGuard, LateGuard  # noqa: E402

d2l = registry.load("mxnet")

ROWS, BATCH = 40, 8  # five batches an epoch, in order


OPTIMIZERS = {
    "sgd": lambda: GluonNet(0.05),
    "momentum": lambda: GluonNet(0.05, momentum=0.9),
    "adam": lambda: GluonNet(0.05, "adam"),
    "schedule": lambda: GluonNet(0.05,
                                 lr_scheduler=mx.lr_scheduler.FactorScheduler(step=3, factor=0.5)),
}


class OneBadEpoch(DataModule):
    """The same five batches each epoch, in order; in epoch ``bad_epoch`` row ``bad_row``'s target is
    3e38 (finite data, an infinite squared loss)."""

    def __init__(self, bad_epoch: int, bad_row: int) -> None:
        super().__init__()
        rng = onp.random.default_rng(3)
        self.X = rng.standard_normal((ROWS, 2)).astype(onp.float32)
        self.y = (self.X @ onp.array([[2.0], [-3.4]]) + 4.2).astype(onp.float32)
        self.bad_epoch, self.bad_row, self.epoch = bad_epoch, bad_row, 0

    def get_dataloader(self, train: bool) -> Any:
        return self if train else None

    def __len__(self) -> int:
        return ROWS // BATCH

    def __iter__(self) -> Any:
        y = self.y.copy()
        if self.epoch == self.bad_epoch:
            y[self.bad_row] = 3e38
        self.epoch += 1
        return iter([(self.X[i:i + BATCH], y[i:i + BATCH]) for i in range(0, ROWS, BATCH)])


def _optimizer_state(optim: Any) -> tuple[dict[str, onp.ndarray], dict[int, int], int]:
    """The updater's state arrays by index, the update counts and ``num_update``, as host values."""
    leaves: dict[str, onp.ndarray] = {}
    for index, state in optim._updaters[0].states.items():
        flatten_state(f"state.{index}", state, leaves)  # as checkpoints name them
    optimizer = optim._optimizer
    return leaves, dict(optimizer._index_update_count), optimizer.num_update


def _diverging_fit(optimizer: str, bad_epoch: int, bad_row: int, model: Any = None,
                   raises: type[BaseException] = d2lx.DivergenceError) -> dict[str, Any]:
    model = OPTIMIZERS[optimizer]() if model is None else model
    trainer = d2l.Trainer(max_epochs=3, progress=False)
    with pytest.raises(raises) as error:
        trainer.fit(model, OneBadEpoch(bad_epoch, bad_row))
    states, counts, num_update = _optimizer_state(model.optim)
    return {"error": str(error.value), "step": trainer.train_batch_idx, "guard": type(trainer._step.guard),
            "params": [p.data().asnumpy() for p in model.collect_params().values()],
            "grads": [p.grad().asnumpy() for p in model.collect_params().values()],  # the refused step's
            "states": states, "counts": counts, "num_update": num_update}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize(("bad_epoch", "bad_row"), [(0, 0), (1, 20), (1, 39)],
                         ids=["first-step-of-the-fit", "mid-epoch", "last-step-of-an-epoch"])
def test_the_late_guard_ends_where_the_eager_guard_ends(optimizer: str, bad_epoch: int, bad_row: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    late = _diverging_fit(optimizer, bad_epoch, bad_row)
    with monkeypatch.context() as patch:
        patch.setattr(mxnet_step, "update_saver", lambda *args: None)  # what a reader's optimizer gets
        eager = _diverging_fit(optimizer, bad_epoch, bad_row)
    assert late["guard"] is LateGuard and eager["guard"] is EagerGuard
    refused = bad_epoch * ROWS // BATCH + bad_row // BATCH
    assert late["error"] == eager["error"]
    assert f"the loss became NaN or inf at epoch {bad_epoch}, step {refused}" in late["error"]
    assert late["step"] == eager["step"] == refused
    for got, want in zip(late["params"] + late["grads"], eager["params"] + eager["grads"], strict=True):
        onp.testing.assert_array_equal(got, want)
    assert sorted(late["states"]) == sorted(eager["states"])
    for name, want in eager["states"].items():
        onp.testing.assert_array_equal(late["states"][name], want, err_msg=name)
    assert late["counts"] == eager["counts"] and late["num_update"] == eager["num_update"] == refused


class InterruptedAdam(GluonNet):
    """Adam, interrupted (Ctrl-C) in the fourth ``training_step``: right after batch 2's update landed."""

    calls = 0

    def training_step(self, batch: Any) -> Any:
        self.calls += 1
        if self.calls == 4:
            raise KeyboardInterrupt
        return super().training_step(batch)


def test_an_interrupt_after_a_refused_update_still_undoes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch 2's loss is infinite; its update landed and is unread when Ctrl-C comes: the core judges it
    on the way out, so the model holds what the eager guard leaves (which stops at batch 2)."""
    late = _diverging_fit("adam", 0, 20, InterruptedAdam(0.05, "adam"), raises=KeyboardInterrupt)
    monkeypatch.setattr(mxnet_step, "update_saver", lambda *args: None)
    eager = _diverging_fit("adam", 0, 20)
    assert late["guard"] is LateGuard and eager["step"] == 2
    for got, want in zip(late["params"], eager["params"], strict=True):
        onp.testing.assert_array_equal(got, want)
    assert sorted(late["states"]) == sorted(eager["states"])
    for name, want in eager["states"].items():
        onp.testing.assert_array_equal(late["states"][name], want, err_msg=name)
    assert late["num_update"] == eager["num_update"] == 2


def test_a_run_the_late_guard_lets_through_equals_the_eager_guards(monkeypatch: pytest.MonkeyPatch) -> None:
    """No refusal: the copies taken before each update change nothing."""
    def fit() -> list[onp.ndarray]:
        model = OPTIMIZERS["adam"]()
        d2l.Trainer(max_epochs=2, progress=False).fit(model, OneBadEpoch(bad_epoch=-1, bad_row=0))
        return [p.data().asnumpy() for p in model.collect_params().values()]

    late = fit()
    monkeypatch.setattr(mxnet_step, "update_saver", lambda *args: None)
    for got, want in zip(late, fit(), strict=True):
        onp.testing.assert_array_equal(got, want)


def test_only_optimizers_whose_state_d2lx_copies_get_the_late_guard() -> None:
    class Reader(GluonNet):
        def configure_optimizers(self) -> Any:
            return ReaderSGD([p.data() for p in self.collect_params().values()], self.lr)

    class CountingSGD(SGD):  # a reader's subclass of d2lx's SGD, with state of its own
        def step(self, batch_size: int = 1) -> None:
            self.steps = getattr(self, "steps", 0) + 1
            super().step(batch_size)

    class CountingScratch(d2l.LinearRegressionScratch):  # type: ignore[misc, name-defined]
        def configure_optimizers(self) -> Any:
            return CountingSGD([self.w, self.b], self.lr)

    guards = {}
    models = {"gluon": (GluonNet(0.05), True), "d2lx SGD": (d2l.LinearRegressionScratch(2, lr=0.05), True),
              "reader": (Reader(0.05), True), "SGD subclass": (CountingScratch(2, lr=0.05), True),
              "gluon, unchecked": (GluonNet(0.05), False)}
    for name, (model, check_finite) in models.items():
        trainer = d2l.Trainer(max_epochs=1, progress=False, check_finite=check_finite)
        trainer.fit(model, OneBadEpoch(bad_epoch=-1, bad_row=0))
        guards[name] = type(trainer._step.guard)
    assert guards == {"gluon": LateGuard, "d2lx SGD": LateGuard, "reader": EagerGuard,
                      "SGD subclass": EagerGuard, "gluon, unchecked": EagerGuard}
