#!/usr/bin/env bash
# Download the wheels that ci/gpu-test.sh installs, offline, on a GPU machine.
#
# Run this on a machine with network access, then copy DIR into the GPU machine's
# checkout (default DIR: wheels/). The GPU machine brings its own CuPy, PyTorch and
# NumPy; these are the test dependencies it may lack: array-api-compat,
# array-api-extra, array-api-strict, pytest, hypothesis, tqdm, psutil, setuptools (for
# the editable install) and their dependencies (NumPy among them, as a fallback that
# is only installed where the machine has no NumPy of its own).
#
#   bash ci/fetch-wheels.sh [--dry-run] [DIR]
#
# The wheels are chosen for the GPU machine's interpreter, not this one's:
#   XPCONV_WHEEL_PYTHON    its Python version (default 3.11)
#   XPCONV_WHEEL_PLATFORM  its pip platform tags, space separated
#                          (default manylinux2014_x86_64; aarch64: manylinux2014_aarch64)
#   XPCONV_WHEEL_EXTRA     more requirements, space separated (e.g. "matplotlib scikit-learn")
#   PIP                    the pip to run (default: python3 -m pip)
# --dry-run prints the pip command instead of running it.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
if [ "${1:-}" = "--dry-run" ]; then
  dry_run=1
  shift
fi
case "${1:-}" in
  -h | --help)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 0
    ;;
esac
dest=${1:-wheels}
python_version=${XPCONV_WHEEL_PYTHON:-3.11}
read -r -a platforms <<<"${XPCONV_WHEEL_PLATFORM:-manylinux2014_x86_64}"
read -r -a extra <<<"${XPCONV_WHEEL_EXTRA:-}"
read -r -a pip <<<"${PIP:-python3 -m pip}"

# Lower bounds as in pyproject.toml.
requirements=(
  "array-api-compat>=1.11"
  "array-api-extra>=0.8"
  "array-api-strict>=2.3"
  "pytest>=7.4"
  "hypothesis>=6.80"
  "tqdm>=4.60"
  "psutil>=5.9"
  "setuptools>=68"
  ${extra[@]+"${extra[@]}"}
)
command=("${pip[@]}" download --dest "$dest" --only-binary=:all:
  --python-version "$python_version")
for platform in "${platforms[@]}"; do
  command+=(--platform "$platform")
done
command+=("${requirements[@]}")

if [ "$dry_run" = 1 ]; then
  printf '%q ' "${command[@]}"
  printf '\n'
  exit 0
fi

mkdir -p "$dest"
echo "fetch-wheels: Python $python_version, platform ${platforms[*]} -> $dest/"
"${command[@]}"
echo
wheels=("$dest"/*.whl)
echo "fetch-wheels: ${#wheels[@]} wheels in $dest/:"
for wheel in "${wheels[@]}"; do
  echo "  ${wheel##*/}"
done
du -sh "$dest" | sed 's/^/  total /'
echo "Copy $dest/ into the GPU machine's checkout and run: bash ci/gpu-test.sh $dest"
