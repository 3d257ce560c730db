"""Tools around models: finite-difference gradient checks and pictures."""

from __future__ import annotations

from xpconv.tools import plots  # noqa: F401  (xc.tools.plots; matplotlib loads on use)
from xpconv.tools.gradcheck import (
    GradcheckError,
    GradcheckReport,
    InputCheck,
    gradcheck,
)

__all__ = [
    "GradcheckError",
    "GradcheckReport",
    "InputCheck",
    "gradcheck",
]
