"""One torch data-parallel run, started by torchrun (used by the conformance test).

Rank 0 writes the final parameters and history to the path in argv[2].
"""

import json
import sys

from d2lx import torch as d2l
from d2lx.data import SyntheticRegressionData
from d2lx.experiment import build_model

model_kind, out = sys.argv[1], sys.argv[2]
data = SyntheticRegressionData(w=[2, -3.4, 0.5], b=4.2, num_train=203, num_val=20, batch_size=21, seed=4)
net = build_model(d2l, model_kind, 3, 0.05, 4)
trainer = d2l.Trainer(max_epochs=3, devices=2, strategy="data_parallel", progress=False)
history = trainer.fit(net, data)
if trainer.is_global_zero:
    w, b = net.get_w_b()
    with open(out, "w") as f:
        json.dump({"w": w.ravel().tolist(), "b": b.tolist(), "history": history.as_dict(),
                   "steps": trainer.train_batch_idx}, f)
