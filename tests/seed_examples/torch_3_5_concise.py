# d2l 3.5 (seed 002), PyTorch, with only the import line changed to d2lx.
# bound: 0.05
import numpy as np
import torch
from torch import nn
from d2lx import torch as d2l

model = d2l.LinearRegression(lr=0.03)
data = d2l.SyntheticRegressionData(w=torch.tensor([2, -3.4]), b=4.2)
trainer = d2l.Trainer(max_epochs=3)
trainer.fit(model, data)

w, b = model.get_w_b()
print(f'error in estimating w: {data.w - w.reshape(data.w.shape)}')
print(f'error in estimating b: {data.b - b}')
