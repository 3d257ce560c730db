"""A quick mutation check that runs with the suite: hand-picked plausible bugs in the
schedules, the optimizers and the trainer, each planted in a temporary copy of the
package, must make the named tests fail.

The full mutation run (``mutmut run``, see the README's development section) is too
slow for every CI run; this keeps the mutants that once survived, and their
neighbours, under watch. If a snippet below no longer appears in the source, the code
was changed: update the snippet to the new code, keeping the bug it plants.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"

# id, file, original text, mutated text, tests that must catch it
MUTANTS = [
    (
        "momentum-torch-form",  # v = m v + g; w -= lr v instead of the lecture form
        "optim/optimizers.py",
        "velocity = -lr * grad if velocity is None else self.momentum * velocity - lr * grad",
        "velocity = -grad if velocity is None else self.momentum * velocity - grad\n"
        "        velocity = lr * velocity",
        "optim/test_optimizer_decay.py::test_lecture_momentum_under_decay_matches_torch",
    ),
    (
        "schedule-set-up-for-one-epoch",
        "train/trainer.py",
        "self.optimizer.setup(epochs * steps)",
        "self.optimizer.setup(steps)",
        "optim/test_optimizer_decay.py::test_multi_epoch_fit_follows_the_schedule_to_its_last_step",
    ),
    (
        "nesterov-without-lookahead",
        "optim/optimizers.py",
        "return value + (self.momentum * velocity - lr * grad)",
        "return value + velocity",
        "optim/test_optimizer_decay.py::test_lecture_momentum_under_decay_matches_torch",
    ),
    (
        "adam-bias-correction-off-by-one",
        "optim/optimizers.py",
        "t = self.step_count + 1",
        "t = self.step_count + 2",
        "optim/test_optimizer_decay.py::test_adam_under_decay_matches_torch_lambdalr",
    ),
    (
        "linear-decay-misses-its-end",
        "optim/optimizers.py",
        "frac = min(step / max(total - 1, 1), 1.0)\n        return self.initial + ",
        "frac = min(step / max(total, 1), 1.0)\n        return self.initial + ",
        "optim/test_optimizer_decay.py::test_multi_epoch_fit_follows_the_schedule_to_its_last_step",
    ),
    (
        "rate-check-accepts-zero",
        "ops/checks.py",
        "(number <= low if low_open else number < low)",
        "(number < low if low_open else number < low)",
        "optim/test_optimizer_decay.py::test_exponential_decay_needs_positive_rates",
    ),
    (
        "weight-decay-dropped",
        "optim/optimizers.py",
        "grad = grad + self.weight_decay * p.value",
        "grad = grad + 0.0 * p.value",
        "optim/test_optimizer_decay.py::test_lecture_momentum_under_decay_matches_torch",
    ),
]


def _run_tests(package_root: Path, selection: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package_root), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("CI", None)  # the copy has no data folder next to it; these tests need none
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    command += ["-k", "numpy-f64 or not f64 and not f32", str(TESTS / selection)]
    return subprocess.run(command, cwd=package_root, env=env, capture_output=True, text=True)


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    shutil.copytree(ROOT / "xpconv", root / "xpconv", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_every_snippet_is_in_the_package_once() -> None:
    """The fast loop's part of the check (planting runs a pytest per mutant, in CI):
    each snippet can still be planted."""
    if "MUTANT_UNDER_TEST" in os.environ:
        pytest.skip("mutmut's copy of the package holds every mutant's version of the code")
    for name, file, original, _, _ in MUTANTS:
        assert (ROOT / "xpconv" / file).read_text().count(original) == 1, name


@pytest.mark.slow
def test_unmutated_copy_passes(tmp_path: Path) -> None:
    """The control: the same tests on an unchanged copy pass, so a failure below is the
    planted bug's doing."""
    root = _copy(tmp_path)
    for selection in sorted({m[4] for m in MUTANTS}):
        result = _run_tests(root, selection)
        assert result.returncode == 0, f"{selection} fails on the unmutated copy:\n{result.stdout}"


@pytest.mark.slow
@pytest.mark.parametrize("file, original, mutated, selection", [m[1:] for m in MUTANTS],
                         ids=[m[0] for m in MUTANTS])  # fmt: skip
def test_planted_bug_is_caught(
    tmp_path: Path, file: str, original: str, mutated: str, selection: str
) -> None:
    root = _copy(tmp_path)
    path = root / "xpconv" / file
    source = path.read_text()
    assert source.count(original) == 1, (
        f"xpconv/{file} no longer contains the snippet this mutant replaces: {original!r}"
    )
    path.write_text(source.replace(original, mutated))
    result = _run_tests(root, selection)
    assert result.returncode == 1, (
        f"the planted bug survived {selection} (pytest exit {result.returncode}):\n"
        f"{result.stdout[-2000:]}"
    )
