# d2l 3.5 in d2l's JAX style (get_w_b reads the train state), with only the
# import line changed to d2lx.
# bound: 0.05
import jax.numpy as jnp
from d2lx import jax as d2l

model = d2l.LinearRegression(lr=0.03)
data = d2l.SyntheticRegressionData(w=jnp.array([2, -3.4]), b=4.2)
trainer = d2l.Trainer(max_epochs=3)
trainer.fit(model, data)

w, b = model.get_w_b(trainer.state)
print(f'error in estimating w: {data.w - w.reshape(data.w.shape)}')
print(f'error in estimating b: {data.b - b}')
