"""d2lx's benchmark application: ``python -m benchmarks --backend <name>`` from the repository root.

It lives outside the ``d2lx`` package on purpose: it imports d2lx (and one
framework, and Keras in a child process), and nothing in d2lx imports it, so
the library has no import cycle and no benchmark code in its wheel. See
``benchmarks/README.md`` for what is timed and how to read the results.

Modules: :mod:`~benchmarks.workloads` (what is trained),
:mod:`~benchmarks.timing` (warm-up, repeats, medians),
:mod:`~benchmarks.methods` (d2lx and the hand-written loop),
:mod:`~benchmarks.keras_worker` (Keras 3 in a child process),
:mod:`~benchmarks.targets` (ratios and targets), :mod:`~benchmarks.runner`
(one backend's run and its JSON), :mod:`~benchmarks.report` (the printout),
``loops/<backend>.py`` (each framework's hand loops and the reader's d2lx
code), ``combine.py`` (Markdown table and plot from the JSON files).
"""
