"""Hand-written training loops, one module per framework (no d2lx inside).

Every module provides the same small interface, used by ``d2lx bench``:

* ``FRAMEWORK``: the framework's import name; ``framework_version()``.
* ``VARIANTS``: the loop variants worth timing (the runner times each and
  takes the fastest as "the hand-written loop").
* ``Loop(X, y, model, lr, batch_size, variant)``: places ``X`` (n, d) and
  ``y`` (n, 1) float32 NumPy arrays on the device once and builds (compiles)
  the step; ``model`` is ``"concise"`` (the framework's dense layer, MSE
  loss, its SGD optimizer) or ``"scratch"`` (explicit parameters, loss
  ``(y_hat - y)**2 / 2``, hand-written SGD), as in d2l 3.4/3.5.
* ``Loop.run(epochs, w0, b0, rng)``: trains from ``w0`` (d, 1), ``b0`` (1,)
  and returns ``{"w": ndarray, "b": ndarray, "losses": [per-epoch mean
  training loss]}``. Each epoch draws its order with ``rng.permutation(n)``
  (as d2lx does), gathers the data once on the device, and takes one
  optimizer step per minibatch (the last one may be shorter).

These are the baselines d2lx is measured against, so each is written the
fastest idiomatic way for its framework: data already on the device, the
step compiled where the framework compiles (``jax.jit``, ``tf.function``,
hybridized Gluon), no host synchronisation inside an epoch.
"""
