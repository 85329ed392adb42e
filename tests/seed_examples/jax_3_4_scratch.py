# Seed 000 (d2l 3.4 from scratch, JAX/Flax/optax): its training block, with only the d2l import
# line changed to d2lx. The seed's model code does not parse (`class ...(d2l.module)` without a
# colon, a mismatched quote in `loss`), so d2lx's LinearRegressionScratch, the same model, stands
# in for it; `jnp` comes from the book's first cell, which the seed leaves out.
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
