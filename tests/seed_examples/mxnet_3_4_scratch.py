# d2l 3.4 (linear regression from scratch) on MXNet: seed 001's recipe as d2l's MXNet tab writes
# it (the seeds have no MXNet version of 3.4), with only the d2l import line changed to d2lx.
# bound: 0.5
from mxnet import autograd, np, npx
from d2lx import mxnet as d2l

npx.set_np()

model = d2l.LinearRegressionScratch(2, lr=0.03)
data = d2l.SyntheticRegressionData(w=np.array([2, -3.4]), b=4.2)
trainer = d2l.Trainer(max_epochs=3)
trainer.fit(model, data)

print(f'error in estimating w: {data.w - d2l.reshape(model.w, data.w.shape)}')
print(f'error in estimating b: {data.b - model.b}')
