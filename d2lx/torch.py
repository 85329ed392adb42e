"""``import d2lx.torch as d2l``: d2l's PyTorch module, on d2lx.

The same names as d2l 1.0.3's ``d2l.torch`` (``Module``, ``Trainer``,
``SyntheticRegressionData``, the tensor aliases, ``try_gpu``...), built by
:mod:`d2lx.namespace` from :mod:`d2lx.backends.torch`. Importing it imports
PyTorch and no other framework.
"""

from d2lx.namespace import export

export(globals(), "torch")
