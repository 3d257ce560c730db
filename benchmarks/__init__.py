"""Benchmarks for xpconv: measurements against peers run in the same process.

Run ``python -m benchmarks --help`` from the repository root. Every throughput figure is
reported beside PyTorch's own ``nn.Module`` version of the same network, timed in the
same run on the same threads, with warm-up, interleaved rounds and the median.

Modules:

- :mod:`benchmarks.workloads`: the reference workloads W1 and W2, their PyTorch
  equivalents, the random data and the runners that time one step of each contender.
- :mod:`benchmarks.timing`: interleaved rounds and medians.
- :mod:`benchmarks.cpu`: the CPU suite (throughput, per-layer times, peer check).
- :mod:`benchmarks.memory`: peak resident memory per contender, in a fresh process.
- :mod:`benchmarks.lecture_loops`: the lecture's seven-loop convolution against conv2d.
- :mod:`benchmarks.environment`: machine, versions, threads and BLAS.
- :mod:`benchmarks.report`: text and Markdown tables, JSON and the ratio chart.
- :mod:`benchmarks.gpu`: the GPU entry point (device detection).
"""

__all__ = [
    "cpu",
    "environment",
    "gpu",
    "lecture_loops",
    "memory",
    "report",
    "timing",
    "workloads",
]
