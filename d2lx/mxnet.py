"""``import d2lx.mxnet as d2l``: d2l's MXNet/Gluon module, on d2lx.

The same names as d2l 1.0.3's ``d2l.mxnet`` (``Module``, ``Trainer``,
``SyntheticRegressionData``, the tensor aliases, ``try_gpu``...), built by
:mod:`d2lx.namespace` from :mod:`d2lx.backends.mxnet`. Importing it imports
MXNet/Gluon and no other framework.
"""

from d2lx.namespace import export

export(globals(), "mxnet")
