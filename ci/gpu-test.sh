#!/usr/bin/env bash
# On a GPU machine, offline: run the whole test suite with the CuPy and PyTorch-CUDA
# backends included, then the GPU benchmarks.
#
#   bash ci/gpu-test.sh [WHEEL_DIR] [extra pytest arguments]
#
# WHEEL_DIR (default wheels/) holds what ci/fetch-wheels.sh downloaded on a machine
# with network access. CuPy, a CUDA build of PyTorch and NumPy come from the machine's
# own Python: the tests run in a virtual environment created with
# --system-site-packages, the missing test dependencies are installed into it from
# WHEEL_DIR with pip --no-index, and xpconv is installed from this checkout
# (editable, or through PYTHONPATH where setuptools is not available offline).
# Nothing is downloaded.
#
# Environment:
#   PYTHON                interpreter with CuPy / PyTorch (default python3)
#   XPCONV_GPU_VENV       the virtual environment (default .venv-gpu; reused if present)
#   XPCONV_GPU_BENCH      0: skip the benchmarks (default 1)
#   XPCONV_GPU_REHEARSAL  1: go on without a GPU (the GPU cases are skipped visibly):
#                         rehearses the offline installation on any machine
#
# Exit status: 0 when everything passed; 2 when no usable CUDA device was found
# (nothing was installed or run); 1 for a setup error; otherwise pytest's status,
# or the benchmarks' when only they failed.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

case "${1:-}" in
  -h | --help)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 0
    ;;
esac
wheels=${1:-wheels}
[ $# -gt 0 ] && shift
python=${PYTHON:-python3}
venv=${XPCONV_GPU_VENV:-.venv-gpu}

say() { printf 'gpu-test: %s\n' "$*"; }
fail() {
  printf 'gpu-test: %s\n' "$*" >&2
  exit 1
}

if ! command -v "$python" >/dev/null 2>&1; then
  say "no usable CUDA device was found: the interpreter '$python' does not exist." >&2
  say "Set PYTHON to the Python that has CuPy and/or a CUDA build of PyTorch." >&2
  exit 2
fi

# ------------------------------------------------------------------ is there a GPU?
if command -v nvidia-smi >/dev/null 2>&1; then
  if smi=$(nvidia-smi -L 2>&1); then
    smi_state=${smi//$'\n'/; }
  else
    smi_state="present but failed: ${smi//$'\n'/ }"
  fi
else
  smi_state="not found (no NVIDIA driver on PATH)"
fi

# Each probe prints "OK <details>" or "NO <reason>" as its last line.
cupy_state=$("$python" - 2>/dev/null <<'EOF' | tail -n 1
try:
    import cupy
except Exception as exc:  # ImportError, or a CUDA library that fails to load
    print(f"NO not importable ({type(exc).__name__}: {exc})")
else:
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        print(f"NO CuPy {cupy.__version__} finds no device ({type(exc).__name__}: {exc})")
    else:
        if count > 0:
            print(f"OK CuPy {cupy.__version__}, {count} device(s)")
        else:
            print(f"NO CuPy {cupy.__version__} finds no device")
EOF
)
torch_state=$("$python" - 2>/dev/null <<'EOF' | tail -n 1
try:
    import torch
except Exception as exc:
    print(f"NO not importable ({type(exc).__name__}: {exc})")
else:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        print(f"OK PyTorch {torch.__version__}, CUDA {torch.version.cuda}, {name}")
    else:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        print(f"NO PyTorch {torch.__version__} ({build}): torch.cuda.is_available() is False")
EOF
)
[ -n "$cupy_state" ] || cupy_state="NO the CuPy probe crashed ($python)"
[ -n "$torch_state" ] || torch_state="NO the PyTorch probe crashed ($python)"
cupy_ok=0
torch_ok=0
[[ $cupy_state == OK* ]] && cupy_ok=1
[[ $torch_state == OK* ]] && torch_ok=1

report() {
  printf '  %-11s %s\n' "nvidia-smi:" "$smi_state" "CuPy:" "${cupy_state#?? }" \
    "PyTorch:" "${torch_state#?? }"
  printf '  (CuPy and PyTorch as seen by %s)\n' "$python"
}

if [ $cupy_ok = 0 ] && [ $torch_ok = 0 ]; then
  if [ "${XPCONV_GPU_REHEARSAL:-0}" = 1 ]; then
    say "REHEARSAL: no usable CUDA device; installing and testing anyway (GPU cases skip):"
    report
  else
    {
      say "no usable CUDA device was found, so nothing was installed or run:"
      report
      echo "Needs an NVIDIA GPU with its driver (nvidia-smi), and CuPy (cupy-cuda12x or"
      echo "cupy-cuda13x) and/or a CUDA build of PyTorch importable by '$python'"
      echo "(set PYTHON to choose another interpreter)."
    } >&2
    exit 2
  fi
else
  say "CUDA device found:"
  report
  [ $cupy_ok = 0 ] && say "WARNING: no CuPy device: the cupy cases will be skipped, not verified."
  [ $torch_ok = 0 ] && say "WARNING: no PyTorch CUDA: the torch-cuda cases will be skipped, not verified."
fi

# ------------------------------------------------------------------ environment
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv (--system-site-packages: the machine's CuPy, PyTorch, NumPy)"
  if ! "$python" -m venv --system-site-packages "$venv" 2>/dev/null; then
    # No ensurepip (a distribution Python without its venv package): the machine's
    # own pip, seen through the system site-packages, installs into the venv.
    rm -rf "$venv"
    "$python" -m venv --system-site-packages --without-pip "$venv" ||
      fail "could not create the virtual environment $venv with $python"
  fi
fi
vpy="$repo/$venv/bin/python"
[[ $venv == /* ]] && vpy="$venv/bin/python"
"$vpy" -m pip --version >/dev/null 2>&1 ||
  fail "no pip in $venv, and none in $python's site-packages to borrow"

pip_offline=("$vpy" -m pip install --no-index --disable-pip-version-check -q)
if [ -d "$wheels" ]; then
  pip_offline+=(--find-links "$wheels")
else
  say "no wheel directory '$wheels': using only what is installed already"
fi

required=("array-api-compat>=1.11" "array-api-extra>=0.8" "array-api-strict>=2.3"
  "pytest>=7.4" "hypothesis>=6.80")
if ! "${pip_offline[@]}" "${required[@]}"; then
  fail "could not install ${required[*]} offline from '$wheels'. On a machine with" \
    "network access run 'bash ci/fetch-wheels.sh $wheels' (XPCONV_WHEEL_PYTHON=" \
    "$("$vpy" -c 'import sys; print("%d.%d" % sys.version_info[:2])')), copy $wheels/ here."
fi
for optional in "tqdm>=4.60" "psutil>=5.9" "setuptools>=68"; do
  "${pip_offline[@]}" "$optional" 2>/dev/null ||
    say "optional $optional not installed: the tests that need it skip visibly"
done

if "$vpy" -m pip install --no-index --no-deps --no-build-isolation --disable-pip-version-check \
  -q -e "$repo" >/dev/null 2>&1; then
  say "xpconv installed from this checkout (editable)"
else
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
  say "editable install not possible offline (setuptools missing?): PYTHONPATH=$repo"
fi

"$vpy" - <<'EOF'
import importlib

versions = []
for name in ("numpy", "cupy", "torch", "array_api_compat", "array_api_extra",
             "array_api_strict", "pytest", "xpconv"):
    try:
        versions.append(f"{name} {importlib.import_module(name).__version__}")
    except Exception as exc:
        versions.append(f"{name} missing ({type(exc).__name__})")
print("gpu-test: " + ", ".join(versions))

from xpconv.backends import registry as backend
from xpconv.backends.kernels import kernels_for

for name, device in (("cupy", None), ("torch", "cuda")):
    try:
        be = backend.get_backend(name, device=device)
    except backend.BackendError as exc:
        print(f"gpu-test: xpconv backend {name}:{device or 'default'} unavailable: {exc}")
    else:
        print(f"gpu-test: xpconv backend {be.label}: kernels {kernels_for(be.xp).name!r}")
EOF

# ------------------------------------------------------------------ tests
say "running the whole suite: pytest -rs -m 'gpu or not gpu' $*"
"$vpy" -m pytest -rs -m "gpu or not gpu" "$@"
tests_rc=$?

bench_rc=0
if [ "${XPCONV_GPU_BENCH:-1}" != 0 ] && { [ $cupy_ok = 1 ] || [ $torch_ok = 1 ]; }; then
  slug=$("$vpy" -c 'from benchmarks.gpu import device_slug; print(device_slug())')
  out="benchmarks/results/gpu-$slug.json"
  say "GPU benchmarks -> $out"
  "$vpy" -m benchmarks --gpu --markdown --json "$out"
  bench_rc=$?
fi

echo
say "tests: $([ $tests_rc = 0 ] && echo passed || echo "FAILED (status $tests_rc)")"
[ $cupy_ok = 1 ] || say "  cupy cases were skipped: CuPy was not verified on a GPU"
[ $torch_ok = 1 ] || say "  torch-cuda cases were skipped: PyTorch CUDA was not verified"
if [ "${XPCONV_GPU_BENCH:-1}" != 0 ] && { [ $cupy_ok = 1 ] || [ $torch_ok = 1 ]; }; then
  say "benchmarks: $([ $bench_rc = 0 ] && echo "written to $out" || echo "FAILED (status $bench_rc)")"
fi
[ $tests_rc != 0 ] && exit $tests_rc
exit $bench_rc
