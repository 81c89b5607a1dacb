"""Backends other than the reference NumPy one (which lives in :mod:`graphgen.codegen`).

Each backend module provides a :class:`graphgen.codegen.Program` subclass; the code
generator picks it by name (``generate(G, backend="numba")``).
"""
