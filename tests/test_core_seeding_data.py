"""Core data and seeding: framework-free, run in every environment."""

from __future__ import annotations

import numpy as np
import pytest

import d2lx
from d2lx.data import ArrayData, ArrayLoader, SyntheticRegressionData
from d2lx.seeding import generator, initial_linear_params


class NumpyOps:
    """ArrayOps over NumPy itself: lets the core loader be tested with no framework."""

    device_key = "numpy:cpu"

    def __init__(self) -> None:
        self.transfers = 0

    def asarray(self, array):  # type: ignore[no-untyped-def]
        self.transfers += 1
        return np.array(array)

    def indices(self, order):  # type: ignore[no-untyped-def]
        return order

    def take(self, array, indices):  # type: ignore[no-untyped-def]
        return array[indices]

    def split(self, array, size):  # type: ignore[no-untyped-def]
        return [array[i:i + size] for i in range(0, len(array), size)]


def test_same_seed_same_data_and_different_seed_differs() -> None:
    a = SyntheticRegressionData(w=[2, -3.4], b=4.2, seed=3)
    b = SyntheticRegressionData(w=[2, -3.4], b=4.2, seed=3)
    c = SyntheticRegressionData(w=[2, -3.4], b=4.2, seed=4)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.X, c.X)


def test_global_seed_is_used_when_no_seed_given() -> None:
    d2lx.seed(7)
    a = SyntheticRegressionData(w=[1.0], b=0.0)
    b = SyntheticRegressionData(w=[1.0], b=0.0, seed=7)
    np.testing.assert_array_equal(a.X, b.X)
    assert d2lx.get_seed() == 7


def test_seed_none_draws_fresh_entropy() -> None:
    d2lx.seed(None)
    a = SyntheticRegressionData(w=[1.0], b=0.0)
    b = SyntheticRegressionData(w=[1.0], b=0.0)
    assert not np.array_equal(a.X, b.X)


def test_streams_are_independent_of_construction_order() -> None:
    w1, _ = initial_linear_params(generator("params", 5), 3)
    SyntheticRegressionData(w=[1, 2, 3], b=0, seed=5)  # drawing data must not shift params
    w2, _ = initial_linear_params(generator("params", 5), 3)
    np.testing.assert_array_equal(w1, w2)
    assert not np.array_equal(generator("data", 5).random(4), generator("params", 5).random(4))


def test_synthetic_data_matches_its_definition() -> None:
    data = SyntheticRegressionData(w=[2, -3.4], b=4.2, noise=0.0, num_train=50, num_val=20)
    assert data.X.shape == (70, 2) and data.y.shape == (70, 1)
    assert data.X.dtype == np.float32 and data.y.dtype == np.float32
    expected = data.X.astype(np.float64) @ np.array([[2.0], [-3.4]]) + 4.2
    np.testing.assert_allclose(data.y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(data.w, np.array([2, -3.4], np.float32))
    assert data.b == pytest.approx(4.2)


def test_initial_params_layout() -> None:
    w, b = initial_linear_params(generator("params", 0), 4, sigma=0.01)
    assert w.shape == (4, 1) and b.shape == (1,)
    assert w.dtype == np.float32 and np.all(b == 0) and 0 < np.abs(w).max() < 0.1


def test_loader_batches_shuffles_from_the_seeded_stream_and_copies_once() -> None:
    data = SyntheticRegressionData(w=[1.0], b=0.0, num_train=10, num_val=3, batch_size=4, seed=2)
    ops = NumpyOps()
    data.bind(ops)
    loader = data.train_dataloader()
    assert isinstance(loader, ArrayLoader) and len(loader) == 3
    first = [X for X, _ in loader]
    assert [len(X) for X in first] == [4, 4, 2]
    expected_order = generator("shuffle", 2).permutation(10)
    np.testing.assert_array_equal(np.concatenate(first), data.X[:10][expected_order])
    second = np.concatenate([X for X, _ in loader])
    assert not np.array_equal(np.concatenate(first), second)  # a new order each epoch
    data.train_dataloader()
    data.val_dataloader()
    assert ops.transfers == 4  # X, y for train + X, y for val; the second train loader reuses
    val = list(data.val_dataloader())
    np.testing.assert_array_equal(np.concatenate([X for X, _ in val]), data.X[10:])


def test_array_data_reshapes_1d_targets_and_validates() -> None:
    data = ArrayData(np.ones((5, 2)), np.arange(5.0), batch_size=2)
    assert data.y.shape == (5, 1)
    with pytest.raises(d2lx.ShapeMismatchError, match="3 rows"):
        ArrayData(np.ones((3, 2)), np.ones((4, 1)))
    with pytest.raises(d2lx.NonFiniteDataError, match="first at index"):
        ArrayData(np.array([[1.0], [np.nan]]), np.ones(2))
    with pytest.raises(d2lx.InvalidArgumentError, match="empty"):
        ArrayData(np.ones((0, 2)), np.ones((0, 1)))


@pytest.mark.parametrize("on_cpu", [True, False], ids=["cpu", "accelerator"])
def test_a_shuffled_epoch_gathers_blocks_sized_for_its_device(on_cpu: bool) -> None:
    """4 MiB blocks on a CPU (cache-sized), far larger ones on an accelerator (a gather per batch
    would cost two launches a step); either way the epoch is the same permutation of the data."""
    from d2lx.loader import gather_block_bytes

    class CountingOps(NumpyOps):
        def __init__(self) -> None:
            super().__init__()
            self.gather_block_bytes = gather_block_bytes(on_cpu)
            self.takes = 0

        def take(self, array, indices):  # type: ignore[no-untyped-def]
            self.takes += 1
            return array[indices]

    n, d, bs = 8192, 255, 512  # a batch of X and y: 512 x 256 float32 = 0.5 MiB; the epoch 8 MiB
    X = np.arange(n * d, dtype=np.float32).reshape(n, d)
    y = np.arange(n, dtype=np.float32).reshape(n, 1)
    ops = CountingOps()
    loader = ArrayLoader((X, y), bs, True, ops, np.random.default_rng(0), n)
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [bs] * 16
    blocks = 2 if on_cpu else 1  # the CPU's 4 MiB hold 8 of the 16 batches; 256 MiB hold them all
    assert loader.batches_per_block() == (8 if on_cpu else 512) and ops.takes == 2 * blocks
    seen = np.concatenate([b[1] for b in batches]).ravel()
    np.testing.assert_array_equal(np.sort(seen), y.ravel())  # every example once
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), X[seen.astype(int)])
