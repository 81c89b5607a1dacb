"""The backends: sibling packages, each a :class:`graphgen.codegen.program.Program`
subclass plus the templates under ``templates/<backend>/``.

``numpy``: one NumPy statement per value, planned for memory. ``numba``: the same
statements with the elementwise groups fused into ``@numba.njit`` loop kernels, or a
whole function compiled as one. :data:`graphgen.api.BACKENDS` maps each name to its
program.
"""
