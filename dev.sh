#!/usr/bin/env bash
# Set-up and entry points for a fresh machine.
#   ./dev.sh demo   creates .venv if needed and runs the example (python -m example_package)
#   ./dev.sh test   creates .venv if needed, runs ruff, mypy and the tests; then the CUDA build
#                   tests in .venv-cuda (CUDA build of torch + nvcc); SKIP_CUDA_BUILD=1 skips those
set -euo pipefail
cd "$(dirname "$0")"
unset PYTHONDONTWRITEBYTECODE  # measured warm paths assume .pyc files, as users have them
PYTHON=${PYTHON:-python3}
CPU_TORCH=torch==2.13.0    # pinned: an unpinned torch downloads several GB of CUDA packages
CUDA_TORCH=torch==2.14.1   # CUDA 13.0 build, matching the machine's nvcc 13.0

make_venv() {  # folder, torch requirement, extra packages...
    local venv=$1 torch=$2
    shift 2
    if [ ! -x "$venv/bin/python" ]; then
        "$PYTHON" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$torch" ninja filelock setuptools wheel "$@"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
}

case "${1:-}" in
demo)
    make_venv .venv "$CPU_TORCH" pytest xxhash numpy hypothesis ruff mypy matplotlib
    CACHED_CPP_EXTENSION_BUILD_DIR=${CACHED_CPP_EXTENSION_BUILD_DIR:-$(mktemp -d)} .venv/bin/python -m example_package
    ;;
test)
    make_venv .venv "$CPU_TORCH" pytest xxhash numpy hypothesis ruff mypy matplotlib
    .venv/bin/ruff check cpp_extension_tools example_package tests bench setup.py
    .venv/bin/mypy
    .venv/bin/python -m pytest tests -p no:cacheprovider
    if [ "${SKIP_CUDA_BUILD:-0}" != 1 ] && command -v nvcc >/dev/null; then
        make_venv .venv-cuda "$CUDA_TORCH" pytest
        .venv-cuda/bin/python -m pytest tests/test_cuda_build.py tests/test_compiler_launcher.py -p no:cacheprovider
    fi
    ;;
*)
    echo "usage: ./dev.sh demo | ./dev.sh test" >&2
    exit 2
    ;;
esac
