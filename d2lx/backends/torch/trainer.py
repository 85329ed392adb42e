"""``d2l.Trainer`` for PyTorch: devices, placing the model, the step, checkpoint state."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from d2lx.backends.torch.distributed import DataParallel, DataParallelStep
from d2lx.backends.torch.module import Module, trainable_tensors
from d2lx.backends.torch.ops import TorchOps
from d2lx.backends.torch.step import TorchStep
from d2lx.devices import DeviceSpec, gpu_unavailable
from d2lx.errors import CheckpointError
from d2lx.loader import Batch
from d2lx.step import Step
from d2lx.trainer import TrainerBase


class Trainer(TrainerBase):
    """Trains a d2lx PyTorch ``Module`` (see :class:`d2lx.trainer.TrainerBase`).

    ``steps_per_execution > 1`` on a GPU runs each epoch over d2lx's loader
    as CUDA-graph replays (``compiled.py``); on the CPU, over a framework's
    loader or over several devices, PyTorch runs one eager step at a time
    (results are the same).
    """

    backend_name = "torch"
    module_class = Module
    module_kind = "PyTorch"
    module_base = "an nn.Module"
    fused_devices: ClassVar[frozenset[str]] = frozenset({"gpu"})
    _dp: DataParallel | None = None

    def _setup_data_parallel(self, specs: list[DeviceSpec]) -> None:
        self._dp = DataParallel(specs)
        self.device_spec = self._dp.spec
        self.device = self._native_device(self._dp.spec)

    @property
    def is_global_zero(self) -> bool:
        return self._dp is None or self._dp.rank == 0

    def _native_device(self, spec: DeviceSpec) -> torch.device:
        if spec.kind == "cpu":
            return torch.device("cpu")
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if spec.index >= visible:
            raise gpu_unavailable("torch", spec, visible,
                                  "run on a machine with an NVIDIA GPU and a CUDA build of PyTorch")
        return torch.device("cuda", spec.index)

    def _array_ops(self) -> TorchOps:
        return TorchOps(self.device)

    def _place_model(self, model: Any, example: Batch) -> None:
        if self._dp is not None and hasattr(self.train_dataloader, "num_examples"):
            self._dp.check_batches(self.train_dataloader.num_examples, self.train_dataloader.batch_size)
        model.materialize(example, self.device)

    def make_step(self) -> Step:
        return TorchStep(self) if self._dp is None else DataParallelStep(self, self._dp)

    def clip_gradients(self, grad_clip_val: float, model: Any) -> None:
        """Rescale all gradients so their joint L2 norm is at most ``grad_clip_val`` (d2l 9.5).

        ``torch.nn.utils.clip_grad_norm_``: the scale ``min(1, clip / norm)`` is
        computed on the device, so unlike d2l's ``if norm > clip`` there is no
        host round trip per step.
        """
        torch.nn.utils.clip_grad_norm_([p for p in trainable_tensors(model) if p.grad is not None],
                                       grad_clip_val, foreach=True)

    # -- checkpoints -------------------------------------------------------------------------
    def model_state(self) -> dict[str, np.ndarray]:
        return {name: t.detach().cpu().numpy() for name, t in self.model.state_dict().items()}

    def load_model_state(self, state: dict[str, np.ndarray]) -> None:
        own = self.model.state_dict()
        if sorted(own) != sorted(state):
            raise CheckpointError(f"the checkpoint's model state {sorted(state)} does not fit this model's "
                                  f"{sorted(own)}; resume with the model it was saved from")
        for name, tensor in own.items():
            if tuple(tensor.shape) != tuple(state[name].shape):
                raise CheckpointError(f"the checkpoint's {name!r} has shape {tuple(state[name].shape)}, the "
                                      f"model's {tuple(tensor.shape)}; resume with the same model")
        self.model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """``torch.optim`` state as arrays: ``state.<param index>.<name>`` (momentum buffers, step counts)."""
        optim = self.optim
        if not isinstance(optim, torch.optim.Optimizer):
            return {}
        out = {}
        for index, slots in optim.state_dict()["state"].items():
            for name, value in slots.items():
                out[f"state.{index}.{name}"] = torch.as_tensor(value).detach().cpu().numpy()
        return out

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        optim = self.optim
        if not isinstance(optim, torch.optim.Optimizer):
            if state:
                raise CheckpointError(f"the checkpoint holds optimizer state ({sorted(state)}) but "
                                      f"{type(optim).__name__} keeps none; resume with the same optimizer")
            return
        current = optim.state_dict()
        slots: dict[int, dict[str, torch.Tensor]] = {}
        count = sum(len(group["params"]) for group in current["param_groups"])
        for key, value in state.items():
            parts = key.split(".")
            if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit() or int(parts[1]) >= count:
                raise CheckpointError(f"the checkpoint's optimizer entry {key!r} does not fit "
                                      f"{type(optim).__name__}; resume with the same optimizer")
            slots.setdefault(int(parts[1]), {})[parts[2]] = torch.from_numpy(np.array(value))
        current["state"] = slots
        try:
            optim.load_state_dict(current)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"the checkpoint's optimizer state does not fit {type(optim).__name__}: "
                                  f"{exc}") from None

    def rng_state(self) -> dict[str, np.ndarray]:
        state = {"torch_cpu": torch.get_rng_state().numpy()}
        if self.device.type == "cuda":
            state["torch_cuda"] = torch.cuda.get_rng_state(self.device).numpy()
        return state

    def load_rng_state(self, state: dict[str, np.ndarray]) -> None:
        if "torch_cpu" in state:
            torch.set_rng_state(torch.from_numpy(np.array(state["torch_cpu"], dtype=np.uint8)))
        if "torch_cuda" in state and self.device.type == "cuda":
            cuda = torch.from_numpy(np.array(state["torch_cuda"], dtype=np.uint8))
            torch.cuda.set_rng_state(cuda, self.device)
