"""Kernel tests: the references (``reference.py``) and strategies (``kernel_strategies.py``)
live next to them in the ``tests.kernels`` package."""
