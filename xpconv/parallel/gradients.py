"""The gradient hook of data parallelism: one weighted all-reduce per step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from array_api_compat import array_namespace
from array_api_compat import device as array_device

from xpconv.parallel.communicators import Communicator

Array = Any

# --------------------------------------------------------------------------- gradients


class GradientAverager:
    """A gradient hook: every rank's gradients averaged with one all-reduce per call.

    ``averager(grads)`` flattens all gradients (names as in ``model.parameters()``, in
    the same order on every rank) into one bucket, all-reduces it once and returns the
    mean, unflattened, as a new dict. With :attr:`examples` set to the number of
    examples this rank's gradients were averaged over, the mean is weighted by it (the
    count travels in the same bucket), so unequal shares of a global batch give exactly
    the gradient of the mean loss over the global batch. A rank with an empty share
    passes zero gradients and ``examples = 0``.
    """

    def __init__(self, communicator: Communicator) -> None:
        if not isinstance(communicator, Communicator):
            raise TypeError(
                f"communicator: expected a Communicator, got {type(communicator).__name__}"
            )
        self.communicator = communicator
        self.examples: int | None = None

    def __call__(self, grads: Mapping[str, Array]) -> dict[str, Array]:
        if not grads:
            return {}
        missing = [name for name, g in grads.items() if g is None]
        if missing:
            raise ValueError(
                f"grads: expected an array for every parameter, got None for {missing}"
            )
        values = list(grads.values())
        xp = array_namespace(*values)
        shapes = [tuple(g.shape) for g in values]
        flat = [xp.reshape(g, (-1,)) for g in values]
        comm = self.communicator
        if self.examples is None:
            total = comm.allreduce(xp.concat(flat))
            mean = total / comm.size
        else:
            weight = xp.asarray(
                [float(self.examples)], dtype=values[0].dtype, device=array_device(values[0])
            )
            total = comm.allreduce(xp.concat([xp.concat(flat) * weight[0], weight]))
            count = total[-1]
            mean = total[:-1] / count
        out, offset = {}, 0
        for name, shape, g in zip(grads, shapes, flat):
            size = int(g.shape[0])
            out[name] = xp.reshape(mean[offset : offset + size], shape)
            offset += size
        return out
