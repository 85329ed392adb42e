"""``import d2lx.tensorflow as d2l``: d2l's TensorFlow/Keras module, on d2lx.

The same names as d2l 1.0.3's ``d2l.tensorflow`` (``Module``, ``Trainer``,
``SyntheticRegressionData``, the tensor aliases, ``try_gpu``...), built by
:mod:`d2lx.namespace` from :mod:`d2lx.backends.tensorflow`. Importing it imports
TensorFlow/Keras and no other framework.
"""

from d2lx.namespace import export

export(globals(), "tensorflow")
