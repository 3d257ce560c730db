"""PyTorch tensors: the kernel table (torch is imported on first use)."""
