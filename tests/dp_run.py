"""One data-parallel run of the conformance suite, in a fresh process.

    python tests/dp_run.py MODEL DEVICES OUT.json

A fresh process because JAX (``XLA_FLAGS``) and TensorFlow (logical devices)
fix their device lists at start-up; torch runs it under torchrun, one process
per device. The process that reports (rank 0) writes the final parameters and
history to OUT.json. The backend is ``$D2LX_BACKEND``.
"""

import json
import sys

from d2lx import registry
from d2lx.data import SyntheticRegressionData
from d2lx.experiment import build_model

model_kind, devices, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
d2l = registry.load()
# 203 examples in batches of 21: the last batch (14) is shorter and splits unevenly over 3 devices.
data = SyntheticRegressionData(w=[2, -3.4, 0.5], b=4.2, num_train=203, num_val=20, batch_size=21, seed=4)
net = build_model(d2l, model_kind, 3, 0.05, 4)
trainer = d2l.Trainer(max_epochs=3, devices=devices, progress=False)
history = trainer.fit(net, data)
if trainer.is_global_zero:
    w, b = net.get_w_b()
    with open(out, "w") as f:
        json.dump({"w": w.ravel().tolist(), "b": b.tolist(), "history": history.as_dict(),
                   "steps": trainer.train_batch_idx, "strategy": trainer.strategy,
                   "devices": [str(s) for s in trainer.device_specs]}, f)
