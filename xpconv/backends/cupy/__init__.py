"""CuPy: the CUDA kernel table (CuPy is imported on first use)."""
