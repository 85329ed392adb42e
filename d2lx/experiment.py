"""The seed experiment (d2l 3.4/3.5) as one function, for the CLI, sweeps and benchmarks.

``run_fit`` trains ``y = X [2, -3.4] + 4.2 + noise`` with the scratch or the
concise model on any backend and returns a framework-free
:class:`FitResult`. Everything random comes from ``seed``, so the same call
on two backends is the same experiment.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from d2lx import registry
from d2lx.checkpoint import ModelCheckpoint
from d2lx.data import SyntheticRegressionData
from d2lx.errors import InvalidArgumentError, OutputError
from d2lx.outputs import check_output_path

SEED_W = (2.0, -3.4)
SEED_B = 4.2
ModelKind = Literal["scratch", "concise"]
MODEL_KINDS: tuple[str, ...] = ("scratch", "concise")


@dataclass
class FitResult:
    """One finished run, in plain Python/NumPy types (JSON-ready via :meth:`as_dict`)."""

    backend: str
    model: str
    device: str
    epochs: int
    steps: int
    fit_seconds: float
    w: list[float]
    b: float
    w_error: list[float]
    b_error: float
    train_loss: float
    val_loss: float
    seed: int | None
    framework_version: str
    history: dict[str, list[Any]] = field(default_factory=dict)
    plot: str | None = None  # where the loss curves were written
    resumed: dict[str, Any] | None = None  # the checkpoint this run continued, if any
    output_error: str | None = None  # a file that could not be written after training finished

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_model(
    namespace: Any, kind: str, num_inputs: int, lr: float, seed: int | None, **loss: Any
) -> Any:
    """Build the scratch or concise linear regression of one backend namespace.

    ``loss`` may hold ``loss="huber"`` and ``huber_sigma=...``.
    """
    if kind == "scratch":
        return namespace.LinearRegressionScratch(num_inputs, lr=lr, seed=seed, **loss)
    if kind == "concise":
        return namespace.LinearRegression(lr=lr, seed=seed, **loss)
    raise InvalidArgumentError(f"unknown model {kind!r}; use one of: {', '.join(MODEL_KINDS)}")


def run_fit(
    backend: str | None = None,
    model: str = "scratch",
    *,
    epochs: int = 3,
    lr: float = 0.03,
    batch_size: int = 32,
    num_train: int = 1000,
    num_val: int = 1000,
    w: tuple[float, ...] | list[float] | np.ndarray = SEED_W,
    b: float = SEED_B,
    noise: float = 0.01,
    seed: int | None = 0,
    device: str | None = None,
    steps_per_execution: int = 1,
    progress: bool | None = None,
    plot: str | None = None,
    checkpoint: str | None = None,
    resume: bool = False,
    devices: int = 1,
    loss: str = "squared",
    huber_sigma: float | None = None,
) -> FitResult:
    """Train the seed example once and report errors, losses and fit time.

    ``checkpoint`` saves the run to that file after every epoch; with
    ``resume`` the run continues from it (written by any backend).
    """
    namespace = registry.load(backend)
    name = registry.current_backend_name() if backend is None else registry.canonical_name(backend)
    if model not in MODEL_KINDS:
        raise InvalidArgumentError(f"unknown model {model!r}; use one of: {', '.join(MODEL_KINDS)}")
    data = SyntheticRegressionData(w=np.asarray(w, dtype=np.float64), b=b, noise=noise,
                                   num_train=num_train, num_val=num_val,
                                   batch_size=batch_size, seed=seed)
    loss_args = {} if loss == "squared" else {"loss": loss, "huber_sigma": huber_sigma}
    net = build_model(namespace, model, data.num_inputs, lr, seed, **loss_args)
    if resume and checkpoint is None:
        raise InvalidArgumentError("resume needs a checkpoint path; pass checkpoint=PATH (--checkpoint)")
    callbacks = [] if checkpoint is None else [ModelCheckpoint(checkpoint)]
    plot_path = None if plot is None else check_output_path("plot", plot, image=True)
    trainer = namespace.Trainer(max_epochs=epochs, device=device, steps_per_execution=steps_per_execution,
                                progress=progress, callbacks=callbacks, devices=devices)
    output_error = None
    try:
        history = trainer.fit(net, data, ckpt_path=checkpoint if resume else None)
    except OutputError as exc:
        if trainer.epochs_done < epochs:  # a checkpoint failed mid-run: the run is not finished
            raise
        history, output_error = trainer.history, str(exc)  # the last checkpoint: the result stands
    finally:
        for callback in callbacks:
            callback.release()
    if plot_path is not None and output_error is None and trainer.is_global_zero:
        try:
            trainer.plot(plot_path)
        except OutputError as exc:
            output_error = f"{exc} (training finished; its results are printed above)"
    w_hat, b_hat = net.get_w_b()
    w_err = data.w - w_hat.reshape(data.w.shape)
    b_err = data.b - float(b_hat.reshape(-1)[0])
    return FitResult(
        backend=name,
        model=model,
        device=", ".join(str(s) for s in trainer.device_specs),
        epochs=epochs,
        steps=int(trainer.train_batch_idx),
        fit_seconds=float(trainer.fit_seconds),
        w=[float(v) for v in w_hat.reshape(-1)],
        b=float(b_hat.reshape(-1)[0]),
        w_error=[float(v) for v in w_err],
        b_error=float(b_err),
        train_loss=float(history.train_loss[-1]) if len(history) else float("nan"),
        val_loss=float(history.val_loss[-1]) if len(history) else float("nan"),
        seed=seed,
        framework_version=namespace.framework_version(),
        history=history.as_dict(),
        plot=None if plot_path is None or output_error else str(plot_path),
        resumed=trainer.resumed,
        output_error=output_error,
    )
