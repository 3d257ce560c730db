"""JAX: the memory order is XLA's to choose, so the table says what keeps it cheap.

Inside ``jax.jit`` an array has no strides that Python can see; XLA lays out the whole
step. What it does not do is undo a transpose that an elementwise op or a reshape sits
behind: ``reshape(permute_dims(conv_output))`` in a flatten is a real copy of the
activations, and so is the same in reverse for the gradient. The convolution's output
is a permuted (O, OH * OW * N) matrix, batch innermost, so while JAX traces (under
``jax.jit``, as in ``TrainStep``) this table reports every batched array as
batch-innermost: flatten and the dense products then take their transposed forms
(``_linear``), whose permutes cancel against the convolution's, and XLA sees no
transpose at all between a convolution and the dense layer after it. Run eagerly,
every op is its own program and every transpose a copy, so there the plain forms
stay. Everything else is the portable path. Importing this module does not import JAX.
"""

from __future__ import annotations

from typing import Any

from ._kernels import PORTABLE, Kernels, register_fast_path

Array = Any


def batch_innermost(xp: Any, x: Array) -> bool:
    """Whether to treat ``x`` (N, ...) as stored batch innermost: while JAX traces it,
    every array with a batch of more than one example and another axis."""
    import jax  # already imported: x is a JAX array

    return isinstance(x, jax.core.Tracer) and x.ndim > 1 and x.shape[0] > 1


KERNELS = Kernels(
    "jax",
    PORTABLE.im2col,
    PORTABLE.col2im,
    batch_innermost=batch_innermost,
)

register_fast_path("is_jax_namespace", lambda: KERNELS)
