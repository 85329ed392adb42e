"""``import d2lx.jax as d2l``: d2l's JAX/Flax/optax module, on d2lx.

The same names as d2l 1.0.3's ``d2l.jax`` (``Module``, ``Trainer``,
``SyntheticRegressionData``, the tensor aliases, ``try_gpu``...), built by
:mod:`d2lx.namespace` from :mod:`d2lx.backends.jax`. Importing it imports
JAX/Flax/optax and no other framework.
"""

from d2lx.namespace import export

export(globals(), "jax")
