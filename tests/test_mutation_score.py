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


def test_the_review_sets_aside_only_the_mutants_no_run_can_kill(tmp_path: Path) -> None:
    review = tmp_path / "review.md"
    review.write_text(
        "- `xpconv.a.x_f__mutmut_1`, `_7`: equivalent: the default is the same.\n"
        "- `xpconv.a.xǁCǁg__mutmut_2`, `_h__mutmut_4` (no test in process): GPU only: CUDA.\n"
        "- `xpconv.b.x_k__mutmut_9`, `_m__mutmut_2`: JAX only (the run leaves JAX out).\n"
        "- `xpconv.b.x_k__mutmut_5`: killed by `tests/b.py::test_k` (not equivalent)\n"
        "- `xpconv.b.x_k__mutmut_6`: killed by `tests/b.py::test_k[jax]` (a JAX test)\n"
        "An equivalent `xpconv.c.x_q__mutmut_1` outside a review line.\n",
        encoding="utf-8",
    )
    assert mutation.not_measurable(review) == {
        "xpconv.a.x_f__mutmut_1",
        "xpconv.a.x_f__mutmut_7",
        "xpconv.a.xǁCǁg__mutmut_2",
        "xpconv.a.xǁCǁ_h__mutmut_4",
        "xpconv.b.x_k__mutmut_9",
        "xpconv.b.x__m__mutmut_2",
        "xpconv.b.x_k__mutmut_6",
    }
    assert mutation.not_measurable(tmp_path / "absent.md") == set()


def test_every_reviewed_name_is_a_mutant_name() -> None:
    for name in mutation.not_measurable():
        assert mutation.module_of(name).startswith("xpconv/"), name


@pytest.mark.parametrize(
    ("code", "measurable", "column"),
    [(1, True, 0), (3, False, 0), (36, True, 0), (0, True, 1), (33, True, 2), (5, True, 2)]
    + [(-11, True, 3), (None, True, 4), (0, False, 5), (None, False, 5), (33, False, 5)],
)
def test_each_exit_code_has_its_column(code: int | None, measurable: bool, column: int) -> None:
    assert mutation._column(code, measurable) == column


def test_the_score_counts_the_checked_measurable_mutants_only() -> None:
    # 8 killed, 1 survived, 1 no test in process, 2 not checked, 3 not measurable
    row = mutation.format_row("`m.py`", [8, 1, 1, 0, 2, 3])
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:8] == ["`m.py`", "15", "8", "1", "1", "0", "2", "3"]
    lo, hi = mutation.wilson(8, 10)
    assert cells[8] == f"80.0% ({lo:.1%}-{hi:.1%})"
    assert 0.49 < lo < 0.5 and 0.94 < hi < 0.95  # the Wilson interval of 8 of 10
    assert mutation.format_row("x", [0, 0, 0, 0, 4, 1]).endswith("| - |")
    assert mutation.wilson(0, 0) == (0.0, 1.0)
