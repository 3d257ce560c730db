"""NumPy: its kernel table and the opt-in host tuning (malloc, OpenBLAS threads)."""
