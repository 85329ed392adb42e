# d2l 3.4 (seed 001, the PyTorch recipe as d2l writes it for TensorFlow), with
# only the import lines changed to d2lx.
# bound: 0.5
from d2lx import tensorflow as d2l
import tensorflow as tf

model = d2l.LinearRegressionScratch(2, lr=0.03)
data = d2l.SyntheticRegressionData(w=tf.constant([2, -3.4]), b=4.2)
trainer = d2l.Trainer(max_epochs=3)
trainer.fit(model, data)

print(f'error in estimating w: {data.w - tf.reshape(model.w, data.w.shape)}')
print(f'error in estimating b: {data.b - model.b}')
