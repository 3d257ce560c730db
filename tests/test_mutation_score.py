"""The mutation score's own arithmetic (``ci/mutation.py``): the seeded sample, the
table's columns, and which reviewed mutants it sets aside as not measurable."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "ci_mutation", Path(__file__).resolve().parents[1] / "ci" / "mutation.py"
)
assert _SPEC is not None and _SPEC.loader is not None
mutation = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(mutation)


def _names(module: str, count: int) -> list[str]:
    return [f"{module}.x_f__mutmut_{i}" for i in range(1, count + 1)]


def test_the_sample_is_seeded_per_module_and_the_limit_nests_in_it() -> None:
    names = _names("xpconv.ops.conv", 400) + _names("xpconv.ops.pool", 20)
    full = mutation.sample(names, 0.05, seed=3, minimum=8)
    assert full == mutation.sample(list(reversed(names)), 0.05, seed=3, minimum=8)
    by_module = [n for n in full if ".conv." in n], [n for n in full if ".pool." in n]
    assert [len(m) for m in by_module] == [20, 8]  # 5% of 400; at least the minimum of 20
    limited = mutation.sample(names, 0.05, seed=3, minimum=8, limit=5)
    assert len(limited) == 10 and set(limited) <= set(full)
    assert mutation.sample(names, 0.05, seed=4, minimum=8) != full
    with pytest.raises(SystemExit, match="--fraction"):
        mutation.sample(names, 0.0, seed=3)


def test_a_mutant_belongs_to_its_module_file() -> None:
    assert mutation.module_of("xpconv.ops.conv.x_conv2d__mutmut_3") == "xpconv/ops/conv.py"
    method = "xpconv.train.trainer.xǁTrainerǁfit__mutmut_12"
    assert mutation.module_of(method) == "xpconv/train/trainer.py"
    assert mutation.module_of("xpconv.x___getattr____mutmut_1") == "xpconv/__init__.py"
    with pytest.raises(ValueError, match="not a mutant name"):
        mutation.module_of("xpconv.ops.conv")


def test_the_review_counts_kills_by_hand_and_sets_aside_what_no_run_can_kill(
    tmp_path: Path,
) -> None:
    review = tmp_path / "review.md"
    review.write_text(
        "- `xpconv.a.x_f__mutmut_1`, `_7`: equivalent: the default is the same.\n"
        "- `xpconv.a.xǁCǁg__mutmut_2`, `_h__mutmut_4` (no test in process): GPU only: CUDA.\n"
        "- `xpconv.b.x_k__mutmut_9`, `_m__mutmut_2`: JAX only; planted by hand, "
        "`tests/b.py::test_k[jax]` kills each.\n"
        "- `xpconv.b.x_k__mutmut_3`: import time: no test planted yet.\n"
        "- `xpconv.b.x_k__mutmut_5`: killed by `tests/b.py::test_k` (not equivalent)\n"
        "- `xpconv.b.x_k__mutmut_6`: killed by `tests/b.py::test_k[jax]` (a JAX test)\n"
        "An equivalent `xpconv.c.x_q__mutmut_1` outside a review line.\n",
        encoding="utf-8",
    )
    by_hand, left_out = mutation.BY_HAND, mutation.LEFT_OUT
    assert mutation.reviewed(review) == {
        "xpconv.a.x_f__mutmut_1": left_out,
        "xpconv.a.x_f__mutmut_7": left_out,
        "xpconv.a.xǁCǁg__mutmut_2": left_out,
        "xpconv.a.xǁCǁ_h__mutmut_4": left_out,
        "xpconv.b.x_k__mutmut_9": by_hand,
        "xpconv.b.x__m__mutmut_2": by_hand,
        "xpconv.b.x_k__mutmut_3": left_out,
        "xpconv.b.x_k__mutmut_6": by_hand,
    }
    assert mutation.reviewed(tmp_path / "absent.md") == {}


def test_every_reviewed_name_is_a_mutant_name() -> None:
    for name in mutation.reviewed():
        assert mutation.module_of(name).startswith("xpconv/"), name


@pytest.mark.parametrize(
    ("code", "verdict", "column"),
    [(1, None, 0), (3, "not measurable", 0), (36, None, 0), (None, "killed by hand", 1)]
    + [(0, None, 2), (33, None, 3), (5, None, 3), (-11, None, 4), (None, None, 5)]
    + [(0, "not measurable", 6), (33, "not measurable", 6), (0, "killed by hand", 1)],
)
def test_each_exit_code_has_its_column(code: int | None, verdict: str | None, column: int) -> None:
    assert mutation._column(code, verdict) == column


def test_the_score_counts_the_checked_measurable_mutants_only() -> None:
    # 6 + 2 killed (by the run, by hand), 1 survived, 1 no test in process, 2 not
    # checked, 3 not measurable
    row = mutation.format_row("`m.py`", [6, 2, 1, 1, 0, 2, 3])
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:9] == ["`m.py`", "15", "6", "2", "1", "1", "0", "2", "3"]
    lo, hi = mutation.wilson(8, 10)
    assert cells[9] == f"80.0% ({lo:.1%}-{hi:.1%})"
    assert 0.49 < lo < 0.5 and 0.94 < hi < 0.95  # the Wilson interval of 8 of 10
    assert mutation.format_row("x", [0, 0, 0, 0, 0, 4, 1]).endswith("| - |")
    assert mutation.wilson(0, 0) == (0.0, 1.0)
