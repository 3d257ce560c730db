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
stay.

The weight gradient ``grad2 @ cols.T`` of a layer with few column rows (a first
layer's: at most 32) is a product over the very long column axis with a tiny result,
and XLA's CPU product with that transposed operand is slow. Written as a contraction
over the column axis split in two, the same sum is one ``tensordot`` for which XLA
first copies the columns into the layout its plain product takes: faster overall
(docs/performance.md, "Notes from the kernels").

Everything else is the portable path. Importing this module does not import JAX.
"""

from __future__ import annotations

from typing import Any

from xpconv.backends.kernels import PORTABLE, Kernels, register_fast_path

Array = Any


def batch_innermost(xp: Any, x: Array) -> bool:
    """Whether to treat ``x`` (N, ...) as stored batch innermost: while JAX traces it,
    every array with a batch of more than one example and another axis."""
    import jax  # already imported: x is a JAX array

    return isinstance(x, jax.core.Tracer) and x.ndim > 1 and x.shape[0] > 1


#: Column rows up to which the weight gradient takes the split contraction.
FEW_ROWS = 32


def weight_grad(xp: Any, grad2: Array, cols: Array) -> Array:
    """``grad2 @ cols.T``: (O, L) x (K, L) -> (O, K); for ``K <= FEW_ROWS`` and an even
    ``L`` as one contraction over the column axis split into (2, L / 2)."""
    rows, length = cols.shape
    if rows > FEW_ROWS or length % 2:
        return grad2 @ cols.T
    halves = (2, length // 2)
    return xp.tensordot(
        xp.reshape(grad2, (grad2.shape[0], *halves)),
        xp.reshape(cols, (rows, *halves)),
        axes=([1, 2], [1, 2]),
    )


KERNELS = Kernels(
    "jax",
    PORTABLE.im2col,
    PORTABLE.col2im,
    weight_grad=weight_grad,
    batch_innermost=batch_innermost,
)

register_fast_path("is_jax_namespace", lambda: KERNELS)
