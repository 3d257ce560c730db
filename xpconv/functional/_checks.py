"""The old home of the argument checks, kept importable: see :mod:`.checks`."""

from .checks import check_float, check_rank, int_pair, namespace, positive_int

__all__ = ["check_float", "check_rank", "int_pair", "namespace", "positive_int"]
