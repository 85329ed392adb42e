"""The benchmark's workloads: what is trained, on which data, from which initial parameters.

A :class:`Workload` is plain data (it crosses into the Keras child process
as JSON). The data of a workload is d2lx's :class:`d2lx.data.SyntheticRegressionData`
(seeded NumPy arrays, a training and a validation split), built once per
workload and reused by every method and repeat: d2lx caches its device copy
per data module, and the hand-written loops keep their own device copy too.
Initial parameters come from d2lx's seeded ``"params"`` stream, so d2lx, the
hand-written loop and Keras start from the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

SEED = 0
#: Learning rate of the linear workloads (d2l 3.4/3.5's) and of the MLP (plain SGD on the MSE).
LR = 0.03
MLP_LR = 0.01
#: X and y together above this are "large": their time is compared with a NumPy copy
#: (well past this CPU's last-level cache).
LARGE_BYTES = 32 * 2**20
GROUPS = ("seed", "large", "mlp", "loader", "sweep", "gpu")
#: What a run times unless ``--only`` says otherwise: everything a CPU runs (``gpu`` needs a GPU).
DEFAULT_GROUPS = ("seed", "large", "mlp", "loader", "sweep")
#: The backends whose loops and d2lx adapters the GPU group times (the ones with GPU builds to test).
GPU_BACKENDS = ("jax", "torch")


@dataclass(frozen=True)
class Workload:
    """One training job: ``epochs`` passes over ``num_train`` examples, validated on ``num_val``.

    ``model`` is ``"concise"`` or ``"scratch"`` (d2l 3.5/3.4's linear
    regression) or ``"mlp"`` (``num_inputs -> hidden -> 1``, ReLU). ``loader``
    says who batches: ``"d2lx"`` (d2lx's device-resident loader, the data
    module's default) or ``"framework"`` (the framework's own loader, returned
    by the data module's ``get_dataloader``). ``device`` is where every
    method trains (``"cpu"``, or ``"gpu"`` for the GPU group).
    """

    name: str
    group: str
    model: str
    num_train: int
    num_inputs: int
    batch_size: int
    epochs: int
    num_val: int
    hidden: int = 0
    loader: str = "d2lx"
    device: str = "cpu"

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.num_train // self.batch_size)

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def bytes_per_epoch(self) -> int:
        """Bytes of the training X and y (float32) one epoch reads."""
        return self.num_train * (self.num_inputs + 1) * 4

    @property
    def large(self) -> bool:
        """Whether a copy of the data is timed (NumPy's, or the device's on a GPU): the ``large`` and
        ``gpu`` groups, or data past the caches."""
        return self.group in ("large", "gpu") or self.bytes_per_epoch >= LARGE_BYTES

    @property
    def keras(self) -> bool:
        """Keras 3 ``fit`` has this model (no scratch model) on arrays (not the framework-loader path),
        on the CPU (the GPU machine has no Keras)."""
        return self.model in ("concise", "mlp") and self.loader == "d2lx" and self.device == "cpu"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(steps=self.steps, steps_per_epoch=self.steps_per_epoch,
                 bytes_per_epoch=self.bytes_per_epoch, large=self.large)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Workload:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def seed_workloads(quick: bool = False) -> list[Workload]:
    """d2l 3.4/3.5 as d2lx's defaults run it: 1000 x 2, batch 32, 3 epochs, 1000 validation examples."""
    return [Workload(f"seed/{m}", "seed", m, 1000, 2, 32, 3, 1000) for m in ("concise", "scratch")]


def large_workloads(quick: bool = False) -> list[Workload]:
    """Bandwidth-bound: 100,000 x 256 (about 100 MB), batch 4096, one epoch plus as much validation."""
    if quick:
        return [Workload("large/concise", "large", "concise", 20_000, 128, 2048, 1, 20_000)]
    return [Workload("large/concise", "large", "concise", 100_000, 256, 4096, 1, 100_000)]


def mlp_workloads(quick: bool = False) -> list[Workload]:
    """Compute-bound: a reader's MLP 64 -> 256 (ReLU) -> 1 on 100,000 examples, batch 1024."""
    if quick:
        return [Workload("mlp", "mlp", "mlp", 8_192, 64, 1024, 1, 2_048, hidden=256)]
    return [Workload("mlp", "mlp", "mlp", 100_000, 64, 1024, 1, 10_000, hidden=256)]


def loader_workloads(quick: bool = False) -> list[Workload]:
    """The user-loader path: the framework's own loader over 20,000 x 64, batch 256."""
    if quick:
        return [Workload("loader/concise", "loader", "concise", 2_048, 64, 256, 1, 512, loader="framework")]
    return [Workload("loader/concise", "loader", "concise", 20_000, 64, 256, 1, 5_000, loader="framework")]


def gpu_workloads(quick: bool = False) -> list[Workload]:
    """The large workload scaled to 1,000,000 x 256 (1 GB, as much validation) on GPU 0.

    ``--quick`` keeps it small enough to try the path on any GPU in seconds.
    """
    if quick:
        return [Workload("gpu/large", "gpu", "concise", 20_000, 128, 2048, 1, 20_000, device="gpu")]
    return [Workload("gpu/large", "gpu", "concise", 1_000_000, 256, 4096, 1, 1_000_000, device="gpu")]


#: The scaling sweep (concise model, one epoch, validation on a tenth of the training size):
#: one-axis sweeps through a centre of 10^5 examples, 16 inputs, batch 1024. Trimmed so
#: that a full run of one backend stays well under 15 minutes on a 2-core CPU (see the
#: README): one epoch per case, no 10^3-example case (the seed workload covers tiny
#: data), and no full 10^3..10^6 x 2..1024 x 32..8192 grid (10^6 x 1024 alone is 4 GB).
SWEEP_GRID: tuple[tuple[int, int, int], ...] = (
    # (examples, inputs, batch)
    (10_000, 16, 1024),
    (100_000, 16, 1024),
    (1_000_000, 16, 1024),
    (100_000, 2, 1024),
    (100_000, 128, 1024),
    (100_000, 1024, 1024),
    (100_000, 16, 32),
    (100_000, 16, 256),
    (100_000, 16, 8192),
    (1_000_000, 64, 8192),
)
#: ``--quick``: a smoke-sized sweep (seconds).
QUICK_GRID: tuple[tuple[int, int, int], ...] = ((10_000, 16, 256), (150_000, 64, 8192))


def sweep_workloads(quick: bool = False,
                    grid: Iterable[tuple[int, int, int]] | None = None) -> list[Workload]:
    cases = grid if grid is not None else (QUICK_GRID if quick else SWEEP_GRID)
    return [Workload(f"sweep/n{n}_d{d}_b{bs}", "sweep", "concise", n, d, bs, 1, max(bs, n // 10))
            for n, d, bs in cases]


WORKLOADS = {"seed": seed_workloads, "large": large_workloads, "mlp": mlp_workloads,
             "loader": loader_workloads, "sweep": sweep_workloads, "gpu": gpu_workloads}


def select(groups: Iterable[str], quick: bool) -> list[Workload]:
    """The workloads of ``groups``, in :data:`GROUPS` order."""
    wanted = set(groups)
    return [w for g in GROUPS if g in wanted for w in WORKLOADS[g](quick)]


# -- data and initial parameters ---------------------------------------------------------------
def true_weights(num_inputs: int) -> np.ndarray:
    """d2l's ``[2, -3.4]`` for two inputs; else a seeded draw scaled so that ``Var(y)`` stays near 1.3.

    The scaling keeps the MLP's plain SGD stable at one learning rate for
    every width (an unscaled 256-wide target has a variance near 340).
    """
    from d2lx.experiment import SEED_W

    if num_inputs == len(SEED_W):
        return np.asarray(SEED_W)
    return np.random.default_rng(SEED).uniform(-2, 2, num_inputs) / np.sqrt(num_inputs)


def make_data(w: Workload) -> Any:
    """The workload's :class:`d2lx.data.SyntheticRegressionData` (NumPy ``X``, ``y``; both splits)."""
    from d2lx.data import SyntheticRegressionData
    from d2lx.experiment import SEED_B

    return SyntheticRegressionData(true_weights(w.num_inputs), SEED_B, noise=0.01, num_train=w.num_train,
                                   num_val=w.num_val, batch_size=w.batch_size, seed=SEED)


def splits(data: Any, w: Workload) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X, y, X_val, y_val)`` of a workload's data, as the float32 NumPy arrays it holds."""
    n = w.num_train
    return data.X[:n], data.y[:n], data.X[n:], data.y[n:]


def initial_params(w: Workload) -> dict[str, np.ndarray]:
    """The initial parameters every method starts from, float32, in d2lx's layout (inputs x outputs).

    Linear: ``w`` ``(d, 1)`` normal(0, 0.01) and ``b`` zeros, d2lx's own draw
    (what its models start from). MLP: ``W1`` ``(d, h)`` normal(0, sqrt(2/d))
    (He), ``W2`` ``(h, 1)`` normal(0, sqrt(1/h)), zero biases, drawn from the
    same seeded ``"params"`` stream.
    """
    from d2lx.seeding import generator, initial_linear_params

    rng = generator("params", SEED)
    if w.model != "mlp":
        w0, b0 = initial_linear_params(rng, w.num_inputs, 0.01)
        return {"w": np.asarray(w0, np.float32).reshape(-1, 1), "b": np.asarray(b0, np.float32).reshape(1)}
    d, h = w.num_inputs, w.hidden
    return {"W1": rng.normal(0, np.sqrt(2 / d), (d, h)).astype(np.float32), "b1": np.zeros(h, np.float32),
            "W2": rng.normal(0, np.sqrt(1 / h), (h, 1)).astype(np.float32), "b2": np.zeros(1, np.float32)}


def lr_of(w: Workload) -> float:
    return MLP_LR if w.model == "mlp" else LR


def numpy_loss(w: Workload, params: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray) -> float:
    """The model's loss at ``params`` on ``(X, y)``, in NumPy: the baseline a trained run must beat."""
    X64, y64 = X.astype(np.float64), y.astype(np.float64)
    if w.model == "mlp":
        hidden = np.maximum(X64 @ params["W1"] + params["b1"], 0)
        y_hat = hidden @ params["W2"] + params["b2"]
    else:
        y_hat = X64 @ params["w"] + params["b"]
    sq = (y_hat - y64) ** 2
    return float(sq.mean() / (2 if w.model == "scratch" else 1))


def w_error(params: dict[str, np.ndarray], data: Any) -> float | None:
    """Largest distance of a linear model's trained ``w``, ``b`` from the true ones (``None``: MLP)."""
    if "w" not in params:
        return None
    w_hat = np.asarray(params["w"]).reshape(-1)
    b_hat = float(np.asarray(params["b"]).reshape(-1)[0])
    return float(max(np.abs(w_hat - np.asarray(data.w)).max(), abs(b_hat - float(data.b))))
