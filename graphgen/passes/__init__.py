"""Graph passes, ``G -> G``: shapes (prepare), adjoint, optimize."""
