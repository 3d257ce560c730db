"""JAX: the kernel table (JAX is imported on first use)."""
