"""Array-library operations per training step.

Every operation is at least one kernel launch on a GPU (5 to 20 µs each), so the
count per step says how far a backend is from launch-bound. Counted exactly where the
library lets every operation be seen: PyTorch's dispatcher (``TorchDispatchMode``)
sees every ATen operation, operators and in-place updates included, for xpconv on
PyTorch tensors and for PyTorch's own ``nn.Module`` alike. NumPy offers no such hook
(operators and ufuncs bypass any namespace wrapper), so NumPy contenders are not
counted. xpconv on PyTorch is counted stepping eagerly (``xpconv-torch-eager``, also
for ``xpconv-torch``): a compiled step is one call of compiled code, which the
dispatcher does not see into.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .workloads import make_runner

__all__ = ["COUNTABLE", "COUNTED_AS", "VIEWS", "count_ops", "format_ops", "ops_per_step"]

COUNTABLE = ("xpconv-torch-eager", "torch")
#: contenders counted through another one (a compiled step, through its eager twin)
COUNTED_AS = {"xpconv-torch": "xpconv-torch-eager"}
#: Operations that only make a new view of existing memory (no kernel runs).
VIEWS = frozenset(
    {
        "view",
        "_unsafe_view",
        "permute",
        "slice",
        "select",
        "t",
        "transpose",
        "expand",
        "as_strided",
        "detach",
        "unsqueeze",
        "squeeze",
        "alias",
        "_reshape_alias",
        "unbind",
        "split",
        "chunk",
        "lift_fresh",
        "numpy_T",
        "unfold",
    }
)


def count_ops(run: Any, steps: int = 1) -> Counter:
    """ATen operations (by name) that ``run(steps)`` dispatches."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: Counter = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func.overloadpacket.__name__)] += 1
            return func(*args, **(kwargs or {}))

    with _Count() as counter:
        run(steps)
    return counter.ops


def ops_per_step(
    workloads: tuple[str, ...], contenders: tuple[str, ...], batch: int = 32, seed: int = 0
) -> list[dict[str, Any]]:
    """Per workload and countable contender (one in :data:`COUNTED_AS` through the
    one it names): operations in one training step (after one warm-up step), and the
    five most frequent."""
    rows = []
    asked = {COUNTED_AS.get(name, name) for name in contenders}
    counted = [name for name in COUNTABLE if name in asked]
    for workload in workloads:
        for contender in counted:
            runner = make_runner(contender, workload, "train", batch, seed)
            runner.run(1)
            ops = count_ops(runner.run, 1)
            rows.append(
                {
                    "workload": workload,
                    "backend": contender,
                    "ops_per_step": sum(ops.values()),
                    "computing_ops_per_step": sum(
                        n for name, n in ops.items() if name not in VIEWS
                    ),
                    "most_frequent": ops.most_common(5),
                }
            )
    return rows


def format_ops(rows: list[dict[str, Any]]) -> str:
    lines = ["Array-library operations per training step (PyTorch dispatcher):"]
    for row in rows:
        top = ", ".join(f"{name} {n}" for name, n in row["most_frequent"])
        lines.append(
            f"  {row['workload']} {row['backend']}: {row['ops_per_step']}, "
            f"{row['computing_ops_per_step']} not views ({top})"
        )
    return "\n".join(lines)
