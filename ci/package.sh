#!/usr/bin/env bash
# The package as a user gets it: type-check xpconv, build the documentation with
# warnings as errors (executing the tutorial notebook), build the wheel and the sdist,
# then install the wheel (not editable) with its `cli` extra into a fresh virtual
# environment, run the README's examples there and train a model with the `xpconv` command.
# Usage: bash ci/package.sh   (after ci/test.sh, in the same virtual environment)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

if [ -z "${VIRTUAL_ENV:-}" ]; then
  python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install -q -e ".[test,cli,docs]"

# mypy and the documentation build each run on one core: side by side
echo "== mypy, beside the documentation (mkdocs build --strict)"
MYPY_LOG="$(mktemp)"
mypy >"$MYPY_LOG" 2>&1 &
MYPY_PID=$!
# MNIST for the tutorial: $XPCONV_DATA, else the data folder beside the checkout
DATA="${XPCONV_DATA:-$(dirname "$ROOT")/shared/data}"
if [ -d "$DATA/mnist" ]; then export XPCONV_DATA="$DATA"; fi
rm -rf site .cache/mkdocs-jupyter # no cached notebook: the tutorial runs every time
mkdocs build --strict --site-dir site
MYPY_STATUS=0
wait "$MYPY_PID" || MYPY_STATUS=$?
echo "== mypy (at ${SECONDS} s)"
cat "$MYPY_LOG"
rm -f "$MYPY_LOG"
if [ "$MYPY_STATUS" -ne 0 ]; then exit "$MYPY_STATUS"; fi

echo "== wheel and sdist (at ${SECONDS} s)"
rm -rf dist
python -m build --outdir dist .
WHEEL="$(ls dist/xpconv-*.whl)"
ls dist/xpconv-*.tar.gz >/dev/null
python - "$WHEEL" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
for needed in ("xpconv/py.typed", "xpconv/cli/__init__.py"):
    assert needed in names, f"{needed} missing from {sys.argv[1]}"
assert any(n.endswith("licenses/LICENSE") for n in names), "LICENSE missing from the wheel"
PY

echo "== the wheel in a fresh virtual environment (at ${SECONDS} s)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
unset PYTHONPATH  # nothing from the checkout
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q "$ROOT/$WHEEL[cli]"
cd "$WORK"  # away from the checkout: only the installed package can be imported
"$WORK/venv/bin/python" - <<'PY'
import importlib.metadata, pathlib, xpconv
where = pathlib.Path(xpconv.__file__).resolve()
assert "site-packages" in where.parts, f"xpconv imported from {where}, not the wheel"
assert (where.parent / "py.typed").is_file()
assert importlib.metadata.version("xpconv") == xpconv.__version__
print(f"xpconv {xpconv.__version__} from {where.parent}")
PY
# the README's examples, verbatim, after the install the README names (`.[cli]`)
"$WORK/venv/bin/python" - "$ROOT/README.md" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
assert blocks, "no python examples in README.md"
for i, code in enumerate(blocks):
    exec(compile(code, f"README.md, example {i}", "exec"), {"__name__": "__readme__"})
print(f"README: {len(blocks)} examples ran")
PY
"$WORK/venv/bin/xpconv" --version
"$WORK/venv/bin/xpconv" train --limit 2000 --epochs 1 --no-progress --no-plots --out "$WORK/run"
test -s "$WORK/run/model.npz" && test -s "$WORK/run/metrics.json"
"$WORK/venv/bin/xpconv" evaluate "$WORK/run/model.npz"
echo "== package checks passed in ${SECONDS} s"
