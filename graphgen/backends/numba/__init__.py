"""The Numba backend: fused loop kernels and whole-function kernels."""
