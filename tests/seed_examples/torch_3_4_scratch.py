# d2l 3.4 (seed 001), PyTorch, with only the import line changed to d2lx.
# bound: 0.5
from d2lx import torch as d2l
import torch

model = d2l.LinearRegressionScratch(2, lr=0.03)
data = d2l.SyntheticRegressionData(w=torch.tensor([2, -3.4]), b=4.2)
trainer = d2l.Trainer(max_epochs=3)
trainer.fit(model, data)

with torch.no_grad():
    print(f'error in estimating w: {data.w - model.w.reshape(data.w.shape).numpy()}')
    print(f'error in estimating b: {data.b - model.b.numpy()}')
