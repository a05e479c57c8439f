"""Execution backends for compiled circuits, installed as ``pcdsl.backends``.

Backends load lazily so that the front end never imports torch or numba.
"""
