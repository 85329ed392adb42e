# d2l 3.4 (seed 000), JAX/Flax/optax, with only the import line changed to d2lx
# (plus `import jax.numpy as jnp`; the seed's bare LinearRegressionScratch is d2l's).
# bound: 0.5
import jax.numpy as jnp
from d2lx import jax as d2l

model = d2l.LinearRegressionScratch(2, lr=0.03)
data = d2l.SyntheticRegressionData(w=jnp.array([2, -3.4]), b=4.2)
trainer = d2l.Trainer(max_epochs=3)
trainer.fit(model, data)

params = trainer.state.params
print(f"error in estimating w: {data.w - params['w'].reshape(data.w.shape)}")
print(f"error in estimating b: {data.b - params['b']}")
