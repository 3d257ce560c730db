"""Mutation score of every module, measured on a seeded random sample of mutants.

mutmut (configured in ``pyproject.toml``) makes tens of thousands of mutants of
``xpconv/``; checking all of them takes days on two cores. A uniform random sample,
drawn per module with a fixed seed (a ``--fraction`` of its mutants, at least
``--minimum``), estimates the score of each module and of the whole without bias, and
its survivors are a fair picture of what the tests miss. ``score`` prints the estimate
with a 95% Wilson interval.

Every survivor is reviewed in ``tests/mutation_survivors.md``: a test that kills it, or a
one-line reason why no test run by mutmut can. ``score`` reads the review. A mutant the
run cannot select or reach (code run at import time, before mutmut selects a mutant,
or only on JAX, whose cases the run leaves out) that a test kills when the mutated line
is planted by hand counts as killed, in a column of its own. Equivalent mutants (no
behaviour changes) and code that runs only on a CUDA device are left out of the score,
in the last column.

    python ci/mutation.py run --fraction 0.03 --minimum 8 --seed 0 --limit 5   # check the sample
    python ci/mutation.py score --fraction 0.03 --minimum 8 --seed 0 --limit 5  # the docs table
    python ci/mutation.py survivors --fraction 0.03 --minimum 8 --seed 0

Run it from the repository root; ``run`` passes ``--max-children`` to mutmut (default:
the number of CPUs) and sets one BLAS/OpenMP thread per child.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

MUTANTS = Path("mutants")
# mutmut's exit codes of a checked mutant (mutmut/stats.py): 1 and 3 are kills; a run
# past mutmut's CPU-time limit is a kill too (the suite would not finish); 33 and 5: no
# test run in process reaches the mutated function (code run only by subprocesses,
# such as the programs under mpiexec, or only on a GPU). Those count as not killed.
KILLED = {1, 3}
TIMEOUT = {36, -24, 24, 152, 255}
NO_TESTS = {5, 33}
SURVIVED = {0}
# Generating the mutants needs one ``mutmut run``: of these few (the package's ``__dir__``).
SEED_MUTANTS = "xpconv.x___dir____mutmut_*"
REVIEW = Path("tests", "mutation_survivors.md")
#: The reviews' words for a mutant no test run by mutmut can kill (see the module doc).
NOT_MEASURABLE = ("equivalent", "import time", "GPU only", "JAX only")
BY_HAND, LEFT_OUT = "killed by hand", "not measurable"


def read_meta() -> dict[str, int | None]:
    """Every mutant's name and exit code (None: not checked yet)."""
    codes: dict[str, int | None] = {}
    for meta in sorted(MUTANTS.rglob("*.meta")):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def module_of(name: str) -> str:
    """``xpconv.train.trainer.xǁTrainerǁfit__mutmut_3`` -> ``xpconv/train/trainer.py``
    (a package's own functions -> its ``__init__.py``)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.startswith("x") and ("__mutmut_" in part or "ǁ" in part):
            path = "/".join(parts[:i])
            return f"{path}/__init__.py" if Path(path).is_dir() else f"{path}.py"
    raise ValueError(f"not a mutant name: {name!r}")


def _named(line: str) -> list[str]:
    """The mutants a review line names: ```xpconv.m.x_f__mutmut_3`, `_7`, `_g__mutmut_2``
    -> ``x_f__mutmut_3``, ``x_f__mutmut_7`` and ``x__g__mutmut_2`` of ``xpconv.m`` (a
    method's second name: another method of the same class)."""
    names: list[str] = []
    for token in line.split(": ", 1)[0].split("`")[1::2]:
        if token.startswith("xpconv."):
            names.append(token)
        elif names and token[1:].isdigit():  # `_7`: another mutant of the same function
            names.append(names[-1].rsplit("__mutmut_", 1)[0] + "__mutmut" + token)
        elif names and "ǁ" in names[-1]:  # `_g__mutmut_2`: a method of the same class
            names.append(names[-1].rpartition("ǁ")[0] + "ǁ" + token)
        elif names:  # a function of the same module
            names.append(names[-1].rpartition(".")[0] + ".x_" + token)
    return names


def _verdict(text: str) -> str | None:
    """A review's verdict on a mutant: :data:`BY_HAND` (a test kills it planted by hand,
    or a JAX test kills it), :data:`LEFT_OUT` (equivalent, GPU only, or out of the run
    with no test found), or None (a test the run sees kills it)."""
    jax_test = text.startswith("killed by") and "a JAX test" in text
    if jax_test or ("planted by hand" in text and "kill" in text):
        return BY_HAND
    if text.startswith("killed by") or not any(word in text for word in NOT_MEASURABLE):
        return None
    return LEFT_OUT


def reviewed(review: Path = REVIEW) -> dict[str, str]:
    """The review's verdicts (see :func:`_verdict`), read from its ``- `name`: verdict``
    lines; mutants a run sees killed are left out."""
    if not review.exists():
        return {}
    found: dict[str, str] = {}
    for line in review.read_text(encoding="utf-8").splitlines():
        if not line.startswith("- `xpconv.") or ": " not in line:
            continue
        verdict = _verdict(line.split(": ", 1)[1])
        if verdict is not None:
            found.update(dict.fromkeys(_named(line), verdict))
    return found


def sample(
    names: list[str], fraction: float, seed: int, minimum: int = 1, limit: int | None = None
) -> list[str]:
    """A seeded uniform sample of ``fraction`` of each module's mutants, at least
    ``minimum`` of them (all of a module that has fewer); with ``limit``, the first
    ``limit`` of each module's draw (itself a uniform sample, nested in the larger one)."""
    if not 0.0 < fraction <= 1.0:
        raise SystemExit(f"--fraction must be in (0, 1], got {fraction}")
    by_module: dict[str, list[str]] = defaultdict(list)
    for name in sorted(names):
        by_module[module_of(name)].append(name)
    rng = random.Random(seed)
    chosen: list[str] = []
    for module in sorted(by_module):
        group = by_module[module]
        count = min(len(group), max(minimum, 1, round(fraction * len(group))))
        chosen += rng.sample(group, count)[:limit]
    return sorted(chosen)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k / n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def chosen_codes(args: argparse.Namespace) -> dict[str, int | None]:
    codes = read_meta()
    if not codes:
        raise SystemExit("no mutants yet: run `python ci/mutation.py run` first")
    chosen = sample(list(codes), args.fraction, args.seed, args.minimum, args.limit)
    return {name: codes[name] for name in chosen}


def command_run(args: argparse.Namespace) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # mutmut runs the tests from mutants/, one folder deeper than the test data expects.
    env.setdefault("XPCONV_TEST_DATA", str(Path("..", "shared", "data").resolve()))
    children = ["--max-children", str(args.max_children)]
    codes = read_meta()
    # One small mutmut run first: it makes the mutants (or remakes those of changed
    # functions) and collects the statistics of new tests, so the sample is drawn
    # from the mutants of the current code.
    first = next((n for n, c in sorted(codes.items()) if c in KILLED), SEED_MUTANTS)
    subprocess.run(["mutmut", "run", *children, first], env=env, check=True)
    # mutmut checks every mutant it is named again; killed ones stay killed (a changed
    # function's mutants are reset by mutmut itself), so name only the others.
    names = [name for name, code in chosen_codes(args).items() if code not in KILLED]
    if not names:
        print("every sampled mutant is killed")
        return 0
    print(f"checking {len(names)} sampled mutants not killed yet", flush=True)
    return subprocess.run(["mutmut", "run", *children, *names], env=env).returncode


#: The score table's columns, in order.
COLUMNS = (
    "killed",
    BY_HAND,
    "survived",
    "no test in process",
    "other",
    "not checked",
    LEFT_OUT,
)


def _column(code: int | None, verdict: str | None = None) -> int:
    """The score table's column (see :data:`COLUMNS`) of a mutant's exit code (timeouts
    are kills) and its review's verdict, for one the run did not kill."""
    if code in KILLED or code in TIMEOUT:
        return 0
    if verdict is not None:
        return COLUMNS.index(verdict)
    if code is None:
        return 5
    if code in SURVIVED:
        return 2
    return 3 if code in NO_TESTS else 4


def command_score(args: argparse.Namespace) -> int:
    verdicts = reviewed()
    rows: dict[str, list[int]] = defaultdict(lambda: [0] * len(COLUMNS))
    for name, code in chosen_codes(args).items():
        rows[module_of(name)][_column(code, verdicts.get(name))] += 1
    print(f"| module | sampled | {' | '.join(COLUMNS)} | score (95% interval) |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    total = [0] * len(COLUMNS)
    for module in sorted(rows, key=lambda m: -sum(rows[m])):
        total = [a + b for a, b in zip(total, rows[module])]
        print(format_row(f"`{module}`", rows[module]))
    print(format_row("all", total))
    return 0


def format_row(label: str, row: list[int]) -> str:
    """A table row: the counts, and the share killed (by the run or by hand) of the
    checked measurable mutants."""
    killed, unchecked, excluded = row[0] + row[1], row[5], row[6]
    checked = sum(row) - unchecked - excluded
    if checked:
        lo, hi = wilson(killed, checked)
        score = f"{killed / checked:.1%} ({lo:.1%}-{hi:.1%})"
    else:
        score = "-"
    counts = " | ".join(str(v) for v in row)
    return f"| {label} | {sum(row)} | {counts} | {score} |"


def command_survivors(args: argparse.Namespace) -> int:
    """Print the checked sampled mutants neither killed nor reviewed."""
    verdicts = reviewed()
    for name, code in chosen_codes(args).items():
        if code is not None and _column(code, verdicts.get(name)) in (2, 3, 4):
            print(name if code in SURVIVED else f"{name} (exit code {code})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "score", "survivors"])
    parser.add_argument(
        "--fraction", type=float, default=0.03, help="share of each module's mutants"
    )
    parser.add_argument("--minimum", type=int, default=8, help="least mutants per module")
    parser.add_argument(
        "--limit", type=int, default=None, help="check only the first LIMIT of each module's draw"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    command = {"run": command_run, "score": command_score, "survivors": command_survivors}
    return command[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
