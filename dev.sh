#!/usr/bin/env bash
# Set-up and entry points for a fresh machine.
#   ./dev.sh demo   creates .venv if needed and runs the example (python -m example_package)
#   ./dev.sh test   creates .venv if needed, runs ruff, mypy, builds the docs and runs the tests; then
#                   the CUDA build tests in .venv-cuda (CUDA build of torch + nvcc); SKIP_CUDA_BUILD=1
#                   skips those
#   ./dev.sh docs   creates .venv if needed and builds the docs into docs/_build/html (warnings are errors)
set -euo pipefail
cd "$(dirname "$0")"
unset PYTHONDONTWRITEBYTECODE  # measured warm paths assume .pyc files, as users have them
PYTHON=${PYTHON:-python3}
CPU_TORCH=torch==2.13.0    # pinned: an unpinned torch downloads several GB of CUDA packages
CUDA_TORCH=torch==2.14.1   # CUDA 13.0 build, matching the machine's nvcc 13.0
DOC_TOOLS=("sphinx>=8.2,<10" "myst-parser>=4,<6" "furo>=2024.8.6,<2027")
DEV_PACKAGES=(pytest xxhash numpy hypothesis ruff mypy matplotlib)

make_venv() {  # folder, torch requirement, extra packages...
    local venv=$1 torch=$2
    shift 2
    if [ ! -x "$venv/bin/python" ]; then
        "$PYTHON" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$torch" ninja filelock setuptools wheel "$@"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
}

build_docs() {  # Sphinx with warnings as errors: a broken reference, include or docstring fails the build
    .venv/bin/python -m pip install -q --disable-pip-version-check "${DOC_TOOLS[@]}"
    .venv/bin/python -m sphinx -W --keep-going -q -b html docs docs/_build/html
    echo "docs: docs/_build/html/index.html"
}

case "${1:-}" in
demo)
    make_venv .venv "$CPU_TORCH" "${DEV_PACKAGES[@]}"
    CACHED_CPP_EXTENSION_BUILD_DIR=${CACHED_CPP_EXTENSION_BUILD_DIR:-$(mktemp -d)} .venv/bin/python -m example_package
    ;;
test)
    make_venv .venv "$CPU_TORCH" "${DEV_PACKAGES[@]}"
    .venv/bin/ruff check cpp_extension_tools example_package tests bench setup.py docs/conf.py
    .venv/bin/mypy
    build_docs
    .venv/bin/python -m pytest tests -p no:cacheprovider
    if [ "${SKIP_CUDA_BUILD:-0}" != 1 ] && command -v nvcc >/dev/null; then
        make_venv .venv-cuda "$CUDA_TORCH" pytest
        .venv-cuda/bin/python -m pytest tests/test_cuda_build.py tests/test_compiler_launcher.py -p no:cacheprovider
    fi
    ;;
docs)
    make_venv .venv "$CPU_TORCH" "${DEV_PACKAGES[@]}"
    build_docs
    ;;
*)
    echo "usage: ./dev.sh demo | ./dev.sh test | ./dev.sh docs" >&2
    exit 2
    ;;
esac
