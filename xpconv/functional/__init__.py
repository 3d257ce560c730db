"""Pure functional ops: forward functions and their explicit backward (VJP) functions.

No state, no globals, no in-place writes into arrays a caller can see. Each op finds
its namespace from its arguments with ``array_api_compat`` and works on any backend.
"""

from ._conv import conv1d, conv1d_backward, conv2d, conv2d_backward, conv_output_size

__all__ = ["conv1d", "conv1d_backward", "conv2d", "conv2d_backward", "conv_output_size"]
