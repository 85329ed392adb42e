"""torch's fused path (``compiled.py``) without a GPU: its device guard and bookkeeping, uncaptured.

On a GPU, ``steps_per_execution > 1`` replays CUDA graphs of these same
steps (``tests/conformance/test_gpu.py`` checks those against the CPU). Here
``GraphedSteps(capture=False)`` runs the same device-guarded steps without
capturing them, so the path's guard, latch and loss buffers are checked on
the CPU against the ordinary eager steps and their host guard.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import d2lx  # noqa: E402
from d2lx import torch as d2l  # noqa: E402
from d2lx.backends.torch.compiled import (  # noqa: E402
    WARMUP_CALLS,
    GraphedSteps,
    capture_problem,
    optimizer_settings,
)
from d2lx.data import DataModule  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_only(backend_name: str) -> None:
    if backend_name != "torch":
        pytest.skip("torch's fused path is tested in the torch environment")


class Uncaptured(d2l.Trainer):  # type: ignore[misc,name-defined]
    """The torch trainer with its fused path on the CPU, capture off (the seam this file tests through)."""

    fused_devices = frozenset({"cpu", "gpu"})

    def make_step(self) -> Any:
        step = super().make_step()
        step.graphs = GraphedSteps(step, capture=False)
        return step


class Arrays(DataModule):
    """Host arrays through d2lx's own loader (no up-front finiteness check, unlike ``ArrayData``)."""

    def __init__(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray) -> None:
        super().__init__(seed=0)
        self.X, self.y, self.X_val, self.y_val, self.batch_size = X, y, X_val, y_val, 16

    def get_dataloader(self, train: bool) -> Any:
        if not train and self.X_val is None:
            return None
        return self.get_tensorloader((self.X, self.y) if train else (self.X_val, self.y_val), train)


def _arrays(n: int = 203, num_val: int = 37, huge_row: int | None = None) -> Arrays:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n + num_val, 2)).astype(np.float32)
    noise = 0.01 * rng.standard_normal((n + num_val, 1))
    y = (X @ np.array([[2.0], [-3.4]]) + 4.2 + noise).astype(np.float32)
    if huge_row is not None:  # finite, but its squared error overflows float32: that batch's loss is inf
        y[huge_row] = 1e30
    return Arrays(X[:n], y[:n], X[n:], y[n:])


class Momentum(d2l.LinearRegression):  # type: ignore[misc,name-defined]
    """d2l's concise model with an optimizer that keeps state (a momentum buffer per parameter)."""

    def configure_optimizers(self) -> Any:
        self.optim = torch.optim.SGD(self.parameters(), self.lr, momentum=0.9)
        return self.optim


def _model(kind: str, lr: float = 0.03) -> Any:
    if kind == "scratch":
        return d2l.LinearRegressionScratch(2, lr=lr)
    return Momentum(lr=lr) if kind == "momentum" else d2l.LinearRegression(lr=lr)


def _fit(trainer_class: type, model: Any, data: Arrays, lr: float = 0.03, epochs: int = 3,
         **options: Any) -> tuple[Any, Any, Exception | None]:
    """One fit of ``model`` (a reader's model, or a ``_model`` kind built with ``lr``), four steps a call
    unless ``options`` say otherwise: the trainer, the model and the d2lx error it raised (if any)."""
    model = _model(model, lr) if isinstance(model, str) else model
    options.setdefault("steps_per_execution", 4)
    trainer = trainer_class(max_epochs=epochs, progress=False, **options)
    try:
        trainer.fit(model, data)
    except (d2lx.DivergenceError, d2lx.NonFiniteDataError) as exc:
        return trainer, model, exc
    return trainer, model, None


def _state(model: Any) -> dict[str, np.ndarray]:
    """The model's parameters and its optimizer's momentum buffers (if any), as NumPy."""
    state = {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items()}
    optim = getattr(model, "optim", None)
    for index, slots in (optim.state_dict()["state"] if optim is not None else {}).items():
        state.update({f"{index}.{name}": torch.as_tensor(t).detach().cpu().numpy().copy()
                      for name, t in slots.items()})
    return state


@pytest.mark.filterwarnings("ignore:the torch backend fuses steps only on a GPU")
@pytest.mark.parametrize("kind", ["scratch", "concise", "momentum"])
@pytest.mark.parametrize("check_finite", [True, False])
def test_the_device_guarded_epochs_end_where_eager_steps_end(kind: str, check_finite: bool) -> None:
    eager, eager_model, none = _fit(d2l.Trainer, kind, _arrays(), check_finite=check_finite)
    fused, fused_model, also_none = _fit(Uncaptured, kind, _arrays(), check_finite=check_finite)
    assert none is None and also_none is None
    assert eager._step.graphs is None  # the CPU: the ordinary eager steps
    graphs = fused._step.graphs
    assert int(graphs.slots[0]) == 13 and int(graphs.slots[1]) == 3  # the last epoch went through it
    assert int(graphs.status[1]) == (13 if check_finite else 0) and int(graphs.status[0]) == 0
    assert fused.train_batch_idx == eager.train_batch_idx == 3 * 13
    assert fused.val_batch_idx == eager.val_batch_idx == 3 * 3
    np.testing.assert_allclose(fused.history.train_loss, eager.history.train_loss, rtol=1e-6)
    np.testing.assert_allclose(fused.history.val_loss, eager.history.val_loss, rtol=1e-6)
    want, got = _state(eager_model), _state(fused_model)
    assert sorted(got) == sorted(want) and len(want) == (4 if kind == "momentum" else 2)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.filterwarnings("ignore:the torch backend fuses steps only on a GPU")
@pytest.mark.parametrize("kind", ["scratch", "momentum"])
def test_a_step_with_an_infinite_loss_is_refused_with_the_same_state(kind: str) -> None:
    # Row 150's target is 1e30: the loss of its batch is inf, its update never lands, and the
    # optimizer's momentum buffers are put back with the parameters.
    eager, eager_model, want_error = _fit(d2l.Trainer, kind, _arrays(huge_row=150))
    fused, fused_model, error = _fit(Uncaptured, kind, _arrays(huge_row=150))
    assert isinstance(want_error, d2lx.DivergenceError), want_error
    assert isinstance(error, d2lx.DivergenceError) and str(error) == str(want_error)
    assert "the loss became NaN or inf" in str(error)
    assert int(fused._step.graphs.status[2]) == 0  # its loss was not finite: "loss"
    assert fused.train_batch_idx == eager.train_batch_idx < 13  # stopped in the first epoch
    assert len(fused.history.train_loss) == 0
    want, got = _state(eager_model), _state(fused_model)
    assert sorted(got) == sorted(want) and len(want) == (4 if kind == "momentum" else 2)
    for name in want:
        assert np.isfinite(got[name]).all(), name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.filterwarnings("ignore:the torch backend fuses steps only on a GPU")
def test_an_overflowing_update_is_refused_exactly_at_its_step() -> None:
    data = _arrays(n=640, num_val=0)
    data.X_val = data.y_val = None
    # lr 1e38: the first update takes the weights past float32's range while its loss is finite.
    _, _, want_error = _fit(d2l.Trainer, "concise", data, lr=1e38, epochs=2)
    fused, model, error = _fit(Uncaptured, "concise", data, lr=1e38, epochs=2)
    assert isinstance(want_error, d2lx.DivergenceError) and isinstance(error, d2lx.DivergenceError)
    assert (error.epoch, error.step) == (want_error.epoch, want_error.step)
    assert fused.train_batch_idx == error.step
    # The eager guard sees the overflow a step late and resets the epoch; the device guard refuses
    # the overflowing update itself and keeps the parameters of the step before.
    assert "reset to its parameters at the start of epoch" in str(want_error)
    assert "the update of that step was not applied" in str(error)
    w, b = model.get_w_b()
    assert np.isfinite(np.asarray(w)).all() and np.isfinite(np.asarray(b)).all()
    assert int(fused._step.graphs.status[2]) == 1  # its loss was finite: "parameters"


def test_optimizers_that_keep_their_step_on_the_host_are_named_with_the_fix() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert capture_problem(torch.optim.SGD(params, 0.1, momentum=0.9)) is None
    assert capture_problem(torch.optim.Adam(params, capturable=True)) is None
    assert capture_problem(d2l.SGD(params, 0.1)) is None  # d2l's hand-written SGD keeps no state
    problem = capture_problem(torch.optim.Adam(params))
    assert problem is not None and "capturable=True" in problem and "Adam" in problem


def test_a_changed_learning_rate_changes_the_optimizer_settings_a_capture_keeps() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    for optim in (torch.optim.SGD(params, 0.1, momentum=0.9), d2l.SGD(params, 0.1)):
        before = optimizer_settings(optim)
        assert ("lr", 0.1) in before[0]
        groups = getattr(optim, "param_groups", [vars(optim)])
        groups[0]["lr"] = 0.05
        assert optimizer_settings(optim) != before


def _halve_lr_after_epoch_1(trainer: Any) -> None:
    if trainer.epoch == 0:
        for group in trainer.optim.param_groups:
            group["lr"] /= 2


@pytest.mark.filterwarnings("ignore:the torch backend fuses steps only on a GPU")
def test_a_learning_rate_changed_between_epochs_makes_the_next_epoch_capture_afresh() -> None:
    eager, eager_model, _ = _fit(d2l.Trainer, "momentum", _arrays(), callbacks=[_halve_lr_after_epoch_1])
    fused, fused_model, _ = _fit(Uncaptured, "momentum", _arrays(), callbacks=[_halve_lr_after_epoch_1])
    # 12 full batches an epoch: counted afresh from epoch 1 on, when the lr it would bake in changed
    assert fused._step.graphs._calls[("train", torch.Size([16, 2]), torch.Size([16, 1]))] == 2 * 12
    np.testing.assert_allclose(fused.history.train_loss, eager.history.train_loss, rtol=1e-6)
    for name, value in _state(eager_model).items():
        np.testing.assert_allclose(_state(fused_model)[name], value, rtol=1e-6, atol=1e-7, err_msg=name)


def test_steps_per_execution_on_the_cpu_warns_that_only_a_gpu_fuses(d2l: Any) -> None:
    with pytest.warns(UserWarning, match="torch backend fuses steps only on a GPU: steps_per_execution=8"):
        trainer = d2l.Trainer(max_epochs=1, steps_per_execution=8)
    trainer.fit(d2l.LinearRegression(lr=0.03), _arrays())
    assert trainer._step.graphs is None and trainer.train_batch_idx == 13


# -- on a GPU: the same steps, captured as CUDA graphs and replayed ---------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU here")


class HostReading(d2l.LinearRegression):  # type: ignore[misc,name-defined]
    """A training_step that reads its loss to the host (``float``): CUDA graphs cannot capture that."""

    def training_step(self, batch: Any) -> Any:
        loss = super().training_step(batch)
        self.last_loss = float(loss)
        return loss


def _same_run(got: tuple[Any, Any, Exception | None], want: tuple[Any, Any, Exception | None]) -> None:
    (trainer, model, error), (ref_trainer, ref_model, ref_error) = got, want
    assert str(error) == str(ref_error)
    assert trainer.train_batch_idx == ref_trainer.train_batch_idx
    np.testing.assert_allclose(trainer.history.train_loss, ref_trainer.history.train_loss, rtol=1e-4)
    np.testing.assert_allclose(trainer.history.val_loss, ref_trainer.history.val_loss, rtol=1e-4)
    want_state, got_state = _state(ref_model), _state(model)
    assert sorted(got_state) == sorted(want_state) and want_state
    for name in want_state:
        np.testing.assert_allclose(got_state[name], want_state[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("kind", ["scratch", "momentum"])
def test_cuda_graphs_replay_every_batch_shape_to_the_cpu_runs_numbers(kind: str) -> None:
    want = _fit(d2l.Trainer, kind, _arrays(), check_finite=True)  # the CPU, eager (with its warning)
    trainer, model, error = _fit(d2l.Trainer, kind, _arrays(), device="gpu")
    graphs = trainer._step.graphs
    assert isinstance(graphs, GraphedSteps) and error is None
    # 12 full batches and one of 11, validation 2 of 16 and one of 5: each shape captured by epoch 3
    assert len(graphs._graphs) == 4 and all(g is not None for g in graphs._graphs.values())
    _same_run((trainer, model, error), want)


@pytest.mark.gpu
@needs_cuda
def test_a_learning_rate_changed_between_epochs_is_replayed_as_on_the_cpu() -> None:
    want = _fit(d2l.Trainer, "momentum", _arrays(), callbacks=[_halve_lr_after_epoch_1])
    trainer, model, error = _fit(d2l.Trainer, "momentum", _arrays(), device="gpu",
                                 callbacks=[_halve_lr_after_epoch_1])
    assert trainer.optim.param_groups[0]["lr"] == 0.015
    _same_run((trainer, model, error), want)


@pytest.mark.gpu
@needs_cuda
def test_a_step_with_an_infinite_loss_is_refused_in_the_graph_as_on_the_cpu() -> None:
    want = _fit(d2l.Trainer, "momentum", _arrays(n=640, huge_row=600), epochs=4)
    trainer, model, error = _fit(d2l.Trainer, "momentum", _arrays(n=640, huge_row=600), epochs=4,
                                   device="gpu")
    # Row 600 lands in a batch after the uncaptured warm-up calls: refused inside a replay.
    assert isinstance(error, d2lx.DivergenceError) and error.epoch == 0 and error.step >= WARMUP_CALLS
    assert any(g is not None for g in trainer._step.graphs._graphs.values())
    _same_run((trainer, model, error), want)


class CapturableAdam(d2l.LinearRegression):  # type: ignore[misc,name-defined]
    """Adam keeps step counts and two moments per parameter; ``capturable`` puts the counts on the GPU."""

    def configure_optimizers(self) -> Any:
        on_gpu = next(self.parameters()).is_cuda  # the trainer moved the model before asking
        self.optim = torch.optim.Adam(self.parameters(), self.lr, capturable=on_gpu)
        return self.optim


@pytest.mark.gpu
@needs_cuda
def test_adams_counts_and_moments_are_put_back_with_a_refused_step() -> None:
    def fit(device: str) -> tuple[Any, Any, Exception | None]:
        return _fit(d2l.Trainer, CapturableAdam(lr=0.03), _arrays(n=640, huge_row=600), epochs=4,
                    device=device)

    with pytest.warns(UserWarning, match="fuses steps only on a GPU"):
        want = fit("cpu")
    got = fit("gpu")
    assert isinstance(got[2], d2lx.DivergenceError) and got[2].step >= WARMUP_CALLS
    assert any(g is not None for g in got[0]._step.graphs._graphs.values())
    assert {"0.step", "0.exp_avg", "0.exp_avg_sq"} <= set(_state(got[1]))
    _same_run(got, want)


class BookSGD(d2l.HyperParameters):  # type: ignore[misc,name-defined]
    """d2l 3.4's hand-written SGD as the book writes it: in-place updates, gradients zeroed in place."""

    def __init__(self, params: Any, lr: float) -> None:
        self.save_hyperparameters()

    def step(self) -> None:
        for param in self.params:
            param -= self.lr * param.grad

    def zero_grad(self) -> None:
        for param in self.params:
            if param.grad is not None:
                param.grad.zero_()


class ClippedScratch(d2l.LinearRegressionScratch):  # type: ignore[misc,name-defined]
    def configure_optimizers(self) -> Any:
        return BookSGD([self.w, self.b], self.lr)


@pytest.mark.gpu
@needs_cuda
def test_the_books_hand_written_sgd_and_clipping_replay_as_on_the_cpu() -> None:
    def fit(device: str) -> tuple[Any, Any, Exception | None]:
        return _fit(d2l.Trainer, ClippedScratch(2, lr=0.03), _arrays(), device=device, gradient_clip_val=0.5)

    with pytest.warns(UserWarning, match="fuses steps only on a GPU"):
        want = fit("cpu")
    got = fit("gpu")
    assert all(g is not None for g in got[0]._step.graphs._graphs.values())
    _same_run(got, want)
    # clipping bit: unclipped, the same run ends elsewhere
    free = d2l.Trainer(max_epochs=3, progress=False)
    free.fit(ClippedScratch(2, lr=0.03), _arrays())
    assert abs(free.history.train_loss[0] - want[0].history.train_loss[0]) > 1e-3


class DropoutMLP(d2l.Module):  # type: ignore[misc,name-defined]
    """A reader's MLP with dropout: each replay must draw a fresh mask, as each eager step does."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.LazyLinear(32), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                                       torch.nn.LazyLinear(1))

    def loss(self, y_hat: Any, y: Any) -> Any:
        return torch.nn.functional.mse_loss(y_hat, y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), self.lr)


@pytest.mark.gpu
@needs_cuda
def test_dropout_draws_the_same_masks_replayed_as_step_by_step() -> None:
    def fit(steps: int) -> tuple[Any, Any, Exception | None]:
        torch.manual_seed(0)  # the layers' weights (built on the CPU) and the GPU's dropout masks
        return _fit(d2l.Trainer, DropoutMLP(lr=0.05), _arrays(), device="gpu", steps_per_execution=steps)

    eager, fused = fit(1), fit(4)
    assert eager[0]._step.graphs is None and eager[2] is None
    assert all(g is not None for g in fused[0]._step.graphs._graphs.values())
    _same_run(fused, eager)
    # Dropout did draw: without it the same run ends elsewhere.
    torch.manual_seed(0)
    plain = DropoutMLP(lr=0.05)
    plain.net[2].p = 0.0
    trainer = d2l.Trainer(max_epochs=3, progress=False, device="gpu")
    trainer.fit(plain, _arrays())
    assert abs(trainer.history.train_loss[-1] - eager[0].history.train_loss[-1]) > 1e-3


@pytest.mark.gpu
@needs_cuda
def test_a_training_step_that_reads_the_host_runs_uncaptured_with_a_warning() -> None:
    want = _fit(d2l.Trainer, "concise", _arrays())
    with pytest.warns(UserWarning, match="training_step cannot be captured in a CUDA graph"):
        got = _fit(d2l.Trainer, HostReading(lr=0.03), _arrays(), device="gpu")
    assert np.isfinite(got[1].last_loss)
    assert any(key[0] == "train" and g is None for key, g in got[0]._step.graphs._graphs.items())
    _same_run(got, want)


@pytest.mark.gpu
@needs_cuda
def test_an_optimizer_with_its_step_on_the_host_runs_ordinary_steps_with_the_fix() -> None:
    class WithAdam(d2l.LinearRegression):  # type: ignore[misc,name-defined]
        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), self.lr)

    trainer = d2l.Trainer(max_epochs=1, progress=False, steps_per_execution=4, device="gpu")
    with pytest.warns(UserWarning, match=r"runs ordinary steps: Adam .* capturable=True"):
        trainer.fit(WithAdam(lr=0.03), _arrays())
    assert trainer._step.graphs is None and trainer.train_batch_idx == 13
