"""In CI a missing oracle or data set fails the run; elsewhere it skips visibly."""

from __future__ import annotations

import pytest
from conftest import require_or_skip


def test_missing_requirement_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no oracle"):
        require_or_skip(False, "no oracle")
    require_or_skip(True, "present")


@pytest.mark.parametrize("value", ["true", "TRUE", "1"])
def test_missing_requirement_fails_in_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="no oracle.*CI=true requires it"):
        require_or_skip(False, "no oracle")
    require_or_skip(True, "present")
