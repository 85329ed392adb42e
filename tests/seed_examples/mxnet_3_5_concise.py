# d2l 3.5 (seed 002), MXNet/Gluon, with only the import lines changed to d2lx.
# bound: 0.05
# (d2lx's concise loss is the MSE on every backend; d2l's MXNet run used the
# half-MSE L2Loss and printed errors of 0.1-0.2. See docs/backends/mxnet.md.)
from mxnet import autograd, gluon, init, np, npx
from mxnet.gluon import nn
from d2lx import mxnet as d2l

npx.set_np()

model = d2l.LinearRegression(lr=0.03)
data = d2l.SyntheticRegressionData(w=np.array([2, -3.4]), b=4.2)
trainer = d2l.Trainer(max_epochs=3)
trainer.fit(model, data)

w, b = model.get_w_b()
print(f'error in estimating w: {data.w - w.reshape(data.w.shape)}')
print(f'error in estimating b: {data.b - b}')
