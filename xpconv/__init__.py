"""xpconv: convolutional neural networks written once against the Python Array API."""

from . import functional
from .backend import Backend, BackendError, get_backend, set_default_backend

__version__ = "0.1.0"

__all__ = ["Backend", "BackendError", "functional", "get_backend", "set_default_backend"]
