# d2l 3.4 (seed 001), translated to MXNet as d2l's MXNet tab writes it, with
# only the import lines changed to d2lx.
# bound: 0.5
from mxnet import autograd, np, npx
from d2lx import mxnet as d2l

npx.set_np()

model = d2l.LinearRegressionScratch(2, lr=0.03)
data = d2l.SyntheticRegressionData(w=np.array([2, -3.4]), b=4.2)
trainer = d2l.Trainer(max_epochs=3)
trainer.fit(model, data)

# d2lx keeps data.w as NumPy (framework-free data), so the MXNet array is
# brought to NumPy before the subtraction.
print(f'error in estimating w: {data.w - model.w.reshape(data.w.shape).asnumpy()}')
print(f'error in estimating b: {data.b - model.b.asnumpy()}')
