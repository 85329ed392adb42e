"""JAX-specific checks: fused steps, compile counts, precision, state, eager d2l code.

The shared conformance suite checks the numbers every backend must produce;
these tests check how the JAX adapter produces them (``lax.scan`` fusion,
tracing once per run, no implicit transfers, the flax train state).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
pytest.importorskip("flax")

import functools  # noqa: E402

import jax.numpy as jnp  # noqa: E402

import d2lx  # noqa: E402
from d2lx import jax as d2l  # noqa: E402
from d2lx.backends.jax.carry import Carry  # noqa: E402
from d2lx.backends.jax.compiled import train_step  # noqa: E402
from d2lx.data import SyntheticRegressionData  # noqa: E402

TOL = {"rtol": 1e-5, "atol": 1e-6}


def _data(num_train: int = 203, batch_size: int = 16, num_val: int = 37, seed: int = 0
          ) -> SyntheticRegressionData:
    return SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=num_train, num_val=num_val,
                                   batch_size=batch_size, seed=seed)


def _model(kind: str, lr: float = 0.03) -> Any:
    return d2l.LinearRegressionScratch(2, lr=lr) if kind == "scratch" else d2l.LinearRegression(lr=lr)


def _run(kind: str, epochs: int = 3, **trainer_kwargs: Any) -> tuple[Any, list, Any]:
    seen: list = []
    trainer = d2l.Trainer(max_epochs=epochs, progress=False,
                          callbacks=[lambda t: seen.append(t.model.get_w_b())], **trainer_kwargs)
    history = trainer.fit(_model(kind), _data())
    return trainer, seen, history


@pytest.mark.parametrize("kind", ["scratch", "concise"])
@pytest.mark.parametrize("steps", [4, 5, 12, 1000])  # divides 12 full batches, does not, all, more
def test_fused_steps_equal_the_step_by_step_run(kind: str, steps: int) -> None:
    ref_trainer, ref_seen, ref_hist = _run(kind, steps_per_execution=1)
    trainer, seen, hist = _run(kind, steps_per_execution=steps)
    assert trainer.train_batch_idx == ref_trainer.train_batch_idx == 3 * 13
    assert trainer.val_batch_idx == ref_trainer.val_batch_idx == 3 * 3
    for (w, b), (w_ref, b_ref) in zip(seen, ref_seen, strict=True):
        np.testing.assert_allclose(w, w_ref, **TOL)
        np.testing.assert_allclose(b, b_ref, **TOL)
    np.testing.assert_allclose(hist.train_loss, ref_hist.train_loss, rtol=1e-5)
    np.testing.assert_allclose(hist.val_loss, ref_hist.val_loss, rtol=1e-5)
    assert seen[-1][0].tolist() != seen[0][0].tolist()  # it did train


class CountingScratch(d2l.LinearRegressionScratch):
    """Counts how often its training step is traced (a Python side effect runs at trace time)."""

    def training_step(self, params: Any, batch: Any, state: Any) -> Any:
        TRACES.append(tuple(batch[0].shape))
        return super().training_step(params, batch, state)


TRACES: list[tuple[int, ...]] = []


@pytest.mark.parametrize(("steps", "variants"), [(1, 2), (5, 3), (12, 2)])
def test_each_variant_is_traced_once_per_process_not_per_epoch_or_fit(steps: int, variants: int) -> None:
    # 12 full batches of 16 + a tail of 11. Compiled variants: chunks of `steps`,
    # a shorter last chunk when `steps` does not divide 12, and the tail step.
    lr = 0.03 + steps * 1e-4  # a model no other test compiles
    TRACES.clear()
    d2l.Trainer(max_epochs=4, progress=False, steps_per_execution=steps).fit(
        CountingScratch(2, lr=lr), _data())
    assert len(TRACES) == variants, "more epochs must not trace again"
    assert sorted(set(TRACES)) == [(11, 2), (16, 2)]
    # A new model object, a new trainer, other data of the same shapes: the compiled code is reused.
    TRACES.clear()
    d2l.Trainer(max_epochs=2, progress=False, steps_per_execution=steps).fit(
        CountingScratch(2, lr=lr), _data(seed=1))
    assert TRACES == []
    # Another learning rate is another program (lr is a constant of the step).
    d2l.Trainer(max_epochs=1, progress=False, steps_per_execution=steps).fit(
        CountingScratch(2, lr=2 * lr), _data())
    assert len(TRACES) == variants


def test_a_trainers_own_hooks_and_a_users_optimizer_are_traced_per_fit() -> None:
    class Scaled(d2l.Trainer):  # a prepare_batch reading the trainer: must see this fit's value
        def prepare_batch(self, batch: Any) -> Any:
            return (batch[0] * self.scale, batch[1])

    lr = 0.0317
    trainer = Scaled(max_epochs=1, progress=False)
    results = []
    for scale in (1.0, 0.0):
        trainer.scale = scale
        TRACES.clear()
        net = CountingScratch(2, lr=lr)
        trainer.fit(net, _data())
        assert len(TRACES) == 2
        results.append(net.get_w_b()[0])
    assert results[0].tolist() != results[1].tolist()

    base = d2l.Trainer(max_epochs=1, progress=False)
    base.fit(CountingScratch(2, lr=lr), _data())
    w_base = base.model.get_w_b()[0]
    TRACES.clear()
    user = d2l.Trainer(max_epochs=1, progress=False)
    net = CountingScratch(2, lr=lr)
    user.prepare_data(_data())
    user.prepare_model(net)
    user.optim = optax.sgd(10 * lr)  # assigned by hand: keyed by the object, never shared
    assert len(TRACES) == 0
    user._run_epochs()
    assert len(TRACES) == 2
    assert user.model.get_w_b()[0].tolist() != w_base.tolist()


def test_compiled_steps_use_full_float32_matmuls() -> None:
    trainer = d2l.Trainer(max_epochs=1, progress=False)
    trainer.fit(d2l.LinearRegressionScratch(2, lr=0.03), _data())
    carry = trainer.initial_carry()
    assert isinstance(carry, Carry)
    batch = (jnp.ones((4, 2)), jnp.ones((4, 1)))

    def jaxpr(t: Any) -> str:
        step = functools.partial(train_step, t.step_spec())
        return str(jax.make_jaxpr(step)(carry, t.state.dropout_rng, batch))

    text = jaxpr(trainer)
    assert "dot_general" in text
    assert text.count("Precision.HIGHEST") >= 2 and "Precision.DEFAULT" not in text
    fast = d2l.Trainer(max_epochs=1, progress=False, matmul_precision="default")
    fast.fit(d2l.LinearRegressionScratch(2, lr=0.03), _data())
    assert "Precision.HIGHEST" not in jaxpr(fast)
    with pytest.raises(d2lx.InvalidArgumentError, match="matmul_precision"):
        d2l.Trainer(max_epochs=1, matmul_precision="fast")


@pytest.mark.parametrize("steps", [1, 6])
def test_an_epoch_makes_no_implicit_host_device_transfer(steps: int) -> None:
    trainer = d2l.Trainer(max_epochs=1, progress=False, steps_per_execution=steps)
    model = d2l.LinearRegression(lr=0.03)
    trainer.fit(model, _data())  # compiles
    with jax.transfer_guard("disallow"):  # float(loss), int(x), np arrays into jit... would raise
        trainer.fit_epoch()
        model.get_w_b()
    assert trainer.train_batch_idx == 2 * 13


@pytest.mark.parametrize("steps", [1, 7])
def test_divergence_stops_only_when_checked(steps: int) -> None:
    def fit(check_finite: bool, epochs: int) -> tuple[Any, Any, Any]:
        net = d2l.LinearRegressionScratch(2, lr=60.0)
        trainer = d2l.Trainer(max_epochs=epochs, progress=False, steps_per_execution=steps,
                              check_finite=check_finite)
        try:
            trainer.fit(net, _data(num_train=640, num_val=0))
        except d2lx.DivergenceError as exc:
            return net, trainer, exc
        return net, trainer, None

    net, _, err = fit(True, 20)
    assert err is not None and 0 < err.step < 20 * 40
    w, b = net.get_w_b()
    assert np.isfinite(w).all() and np.isfinite(b).all()
    # Unchecked, the same run goes through the bad step: that epoch's mean loss is not finite.
    _, trainer, none = fit(False, err.epoch + 1)
    assert none is None and not np.isfinite(trainer.history.train_loss[err.epoch])


def test_divergence_step_is_the_same_fused_or_not() -> None:
    errors, params = [], []
    for steps in (1, 7):
        net = d2l.LinearRegression(lr=30.0)
        trainer = d2l.Trainer(max_epochs=20, progress=False, steps_per_execution=steps)
        with pytest.raises(d2lx.DivergenceError) as info:
            trainer.fit(net, _data(num_train=640, num_val=0))
        errors.append((info.value.epoch, info.value.step))
        assert trainer.train_batch_idx == info.value.step
        params.append(net.get_w_b())
    assert errors[0] == errors[1]
    np.testing.assert_allclose(params[0][0], params[1][0], rtol=1e-5)


def test_refit_and_set_w_b_continue_from_the_given_parameters() -> None:
    _, seen, _ = _run("scratch", epochs=2)  # reference: 2 epochs in one fit
    net = d2l.LinearRegressionScratch(2, lr=0.03)
    data = _data()
    trainer = d2l.Trainer(max_epochs=1, progress=False)
    trainer.fit(net, data)
    np.testing.assert_allclose(net.get_w_b()[0], seen[0][0], **TOL)
    w_after_1, b_after_1 = net.get_w_b()
    net.set_w_b(np.full((2, 1), 123.0), np.array([9.0]))
    np.testing.assert_array_equal(np.asarray(trainer.state.params["w"]), np.full((2, 1), 123.0))
    net.set_w_b(w_after_1, b_after_1)  # back: the next fit must start from these
    trainer.fit(net, data)  # same data object: its shuffle stream is at epoch 2
    np.testing.assert_allclose(net.get_w_b()[0], seen[1][0], **TOL)
    np.testing.assert_allclose(net.get_w_b()[1], seen[1][1], **TOL)


def test_a_trainer_reused_for_another_model_leaves_the_first_trained() -> None:
    trainer = d2l.Trainer(max_epochs=1, progress=False)
    first = d2l.LinearRegressionScratch(2, lr=0.03)
    trainer.fit(first, _data())
    trained = first.get_w_b()
    trainer.fit(d2l.LinearRegressionScratch(2, lr=0.03, seed=9), _data(seed=9))
    np.testing.assert_array_equal(first.get_w_b()[0], trained[0])
    assert not np.allclose(trained[0], d2l.LinearRegressionScratch(2, lr=0.03).get_w_b()[0])


def test_set_w_b_on_a_fresh_concise_model_fixes_its_start() -> None:
    w0 = np.array([[0.5], [-0.25]], np.float32)
    a = d2l.LinearRegression(lr=0.03)
    a.set_w_b(w0, np.array([1.0]))
    assert a.num_inputs == 2
    d2l.Trainer(max_epochs=1, progress=False).fit(a, _data())
    b = d2l.LinearRegression(lr=0.03)
    d2l.Trainer(max_epochs=1, progress=False).fit(b, _data())
    assert not np.allclose(a.get_w_b()[0], b.get_w_b()[0])


def test_train_state_surface_of_d2l_for_jax() -> None:
    trainer = d2l.Trainer(max_epochs=1, progress=False)
    model = d2l.LinearRegression(lr=0.03)
    trainer.fit(model, _data(), key=jax.random.key(3))
    state = trainer.state
    assert isinstance(state, d2l.TrainState) and state.batch_stats == {}
    assert int(state.step) == 13 and trainer.optim is state.tx
    assert set(state.params["net"]) == {"kernel", "bias"}
    w, b = model.get_w_b(state)
    np.testing.assert_array_equal(w, model.get_w_b()[0])
    np.testing.assert_array_equal(b, np.asarray(state.params["net"]["bias"]))
    assert jax.random.split(state.dropout_rng).shape[0] == 2
    with pytest.raises(d2lx.ArgumentTypeError, match="PRNG key"):
        trainer.fit(model, _data(), key=3)


def test_sgd_is_an_optax_gradient_transformation() -> None:
    sgd = d2l.SGD(0.5)
    assert isinstance(sgd, optax.GradientTransformation) and sgd.lr == 0.5
    params = {"w": jnp.array([1.0, 2.0])}
    grads = {"w": jnp.array([0.2, -4.0])}
    for tx in (sgd, sgd(), optax.chain(sgd)):
        updates, _ = tx.update(grads, tx.init(params), params)
        np.testing.assert_allclose(optax.apply_updates(params, updates)["w"], [0.9, 4.0])
    with pytest.raises(d2lx.InvalidArgumentError, match="lr must be > 0"):
        d2l.SGD(0)


def test_the_seeds_eager_fit_epoch_matches_the_compiled_one() -> None:
    class SeedTrainer(d2l.Trainer):
        """d2l 3.4.4's JAX fit_epoch, typos fixed, run eagerly batch by batch."""

        def fit_epoch(self) -> None:
            self.model.training = True
            for batch in self.train_dataloader:
                _, grads = self.model.training_step(self.state.params, self.prepare_batch(batch),
                                                    self.state)
                self.state = self.state.apply_gradients(grads=grads)
                self.state = self.state.replace(dropout_rng=jax.random.split(self.state.dropout_rng)[0])
                self.train_batch_idx += 1
            if self.val_dataloader is None:
                return
            self.model.training = False
            for batch in self.val_dataloader:
                self.model.validation_step(self.state.params, self.prepare_batch(batch), self.state)
                self.val_batch_idx += 1

    _, seen, hist = _run("scratch")
    eager_seen: list = []
    eager = SeedTrainer(max_epochs=3, progress=False,
                        callbacks=[lambda t: eager_seen.append(t.model.get_w_b())])
    eager_hist = eager.fit(_model("scratch"), _data())
    for (w, b), (w_ref, b_ref) in zip(eager_seen, seen, strict=True):
        np.testing.assert_allclose(w, w_ref, **TOL)
        np.testing.assert_allclose(b, b_ref, **TOL)
    np.testing.assert_allclose(eager_hist.train_loss, hist.train_loss, rtol=1e-5)
    np.testing.assert_allclose(eager_hist.val_loss, hist.val_loss, rtol=1e-5)


class MomentumModel(d2l.LinearRegression):
    def configure_optimizers(self) -> Any:
        return optax.sgd(self.lr, momentum=0.9)


def test_optimizer_state_round_trips_for_checkpoints() -> None:
    trainer = d2l.Trainer(max_epochs=2, progress=False)
    trainer.fit(MomentumModel(lr=0.01), _data())
    saved = trainer.optimizer_state()
    assert saved and all(isinstance(v, np.ndarray) for v in saved.values())
    assert any(np.abs(v).sum() > 0 for v in saved.values())
    other = d2l.Trainer(max_epochs=1, progress=False)
    other.fit(MomentumModel(lr=0.01), _data(seed=4))
    other.load_optimizer_state(saved)
    for key, value in other.optimizer_state().items():
        np.testing.assert_array_equal(value, saved[key])
    with pytest.raises(d2lx.CheckpointError, match="same optimizer"):
        other.load_optimizer_state({"nope": np.zeros(1)})
    plain = d2l.Trainer(max_epochs=1, progress=False)
    plain.fit(d2l.LinearRegressionScratch(2, lr=0.03), _data())
    assert plain.optimizer_state() == {}


def test_gradient_clipping_bounds_the_joint_norm() -> None:
    trainer = d2l.Trainer(max_epochs=1, progress=False, gradient_clip_val=1.0)
    grads = {"w": jnp.array([[3.0], [4.0]]), "b": jnp.array([0.0])}
    clipped = trainer.clip_gradients(1.0, grads)
    np.testing.assert_allclose(clipped["w"], [[0.6], [0.8]], rtol=1e-6)
    small = trainer.clip_gradients(10.0, grads)
    np.testing.assert_allclose(small["w"], grads["w"])
    # A clipped run takes smaller steps than an unclipped one from the same start.
    net = d2l.LinearRegressionScratch(2, lr=0.03)
    trainer.fit(net, _data())
    free = d2l.LinearRegressionScratch(2, lr=0.03)
    d2l.Trainer(max_epochs=1, progress=False).fit(free, _data())
    w0, _ = d2l.LinearRegressionScratch(2, lr=0.03).get_w_b()
    assert np.linalg.norm(net.get_w_b()[0] - w0) < np.linalg.norm(free.get_w_b()[0] - w0)


def test_missing_gpu_names_jax_and_the_fix() -> None:
    visible = len([d for d in d2l.list_devices() if d.startswith("gpu")])
    with pytest.raises(d2lx.DeviceUnavailableError, match=r"jax sees .*jax\[cuda12\]"):
        d2l.Trainer(max_epochs=1, device=f"gpu:{visible}")


@pytest.mark.gpu
def test_gpu_run_keeps_data_and_state_on_the_gpu() -> None:
    if not any(d.startswith("gpu") for d in d2l.list_devices()):
        pytest.skip("jax sees no GPU on this machine")
    trainer = d2l.Trainer(max_epochs=1, progress=False, device="gpu")
    trainer.fit(d2l.LinearRegressionScratch(2, lr=0.03), _data())
    gpu = jax.devices("gpu")[0]
    assert trainer.state.params["w"].devices() == {gpu}
    assert trainer.train_dataloader.tensors[0].devices() == {gpu}


@pytest.mark.parametrize("bad", [None, 3])
def test_other_loaders_carry_the_step_count_and_the_last_applied_gradients(bad: int | None) -> None:
    """Over a list of NumPy batches (one compiled call per batch): after the epoch, or after the
    step refused for a NaN batch, ``state.step`` counts the applied steps and ``get_grads`` is the
    last applied step's gradient, both as a float64 NumPy SGD of the same batches says."""
    from oracle import grads_at

    from d2lx.experiment import build_model
    from d2lx.seeding import generator, initial_linear_params

    rng = np.random.default_rng(4)
    batches = [(rng.standard_normal((8, 3)).astype(np.float32),
                rng.standard_normal((8, 1)).astype(np.float32)) for _ in range(5)]
    if bad is not None:
        batches[bad][0][2, 1] = np.nan

    class Listed(d2l.DataModule):  # type: ignore[misc, name-defined]
        def get_dataloader(self, train: bool) -> Any:
            return batches

    lr = 0.05
    net = build_model(d2l, "scratch", 3, lr, 7)
    trainer = d2l.Trainer(max_epochs=1, progress=False)
    applied = 5 if bad is None else bad
    if bad is None:
        trainer.fit(net, Listed())
    else:
        with pytest.raises(d2lx.NonFiniteDataError, match=f"training batch {bad} "):
            trainer.fit(net, Listed())
    w, b = (p.astype(np.float64) for p in initial_linear_params(generator("params", 7), 3, 0.01))
    for X, y in batches[:applied]:
        gw, gb = grads_at(X, y, w, b, model="scratch")
        w, b = w - lr * gw, b - lr * gb
    assert int(trainer.state.step) == applied
    got_w, got_b = net.get_grads()
    np.testing.assert_allclose(got_w, gw, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got_b, gb, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(net.get_w_b()[0], w, rtol=1e-4, atol=1e-6)
