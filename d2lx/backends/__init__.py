"""Backend adapters, one package per framework.

Each ``d2lx.backends.<name>`` package is a *namespace module*: it imports its
framework and exposes the names listed in ``d2lx.BACKEND_NAMES`` plus the
framework-free core names, so ``from d2lx import <name> as d2l`` reads like
``from d2l import <name> as d2l``. It also provides three functions the core
and the CLI use: ``framework_version()``, ``list_devices()`` and
``default_array_ops()``. Nothing here is imported by ``import d2lx``.
"""
