#!/usr/bin/env bash
# Set-up and entry points for a fresh machine.
#   ./dev.sh demo   creates .venv if needed and runs the example (python -m example_package) with its cache
#                   in cached_cpp_extensions/ (git-ignored): the first run builds the C module, later runs
#                   load it; `.venv/bin/cpp-extension-tools clear example_package_ext` makes it cold again
#   ./dev.sh test   creates .venv if needed, installs the programs some tests need (ccache, useradd,
#                   setpriv, mount, ar, gcc) with apt-get where missing and running as root, runs ruff,
#                   mypy, builds the docs and runs the tests (tens of minutes: README.md has figures); then the
#                   CUDA build tests in .venv-cuda (CUDA build of torch + nvcc); SKIP_CUDA_BUILD=1 skips
#                   those. CI (.ci/run) runs exactly this.
#   ./dev.sh docs   creates .venv if needed and builds the docs into docs/_build/html (warnings are errors)
set -euo pipefail
cd "$(dirname "$0")"
unset PYTHONDONTWRITEBYTECODE  # measured warm paths assume .pyc files, as users have them
PYTHON=${PYTHON:-python3}
CPU_TORCH=torch==2.13.0    # pinned: an unpinned torch downloads several GB of CUDA packages
CUDA_TORCH=torch==2.14.1   # CUDA 13.0 build, matching the machine's nvcc 13.0
DOC_TOOLS=("sphinx>=8.2,<10" "myst-parser>=4,<6" "furo>=2024.8.6,<2027")
DEV_PACKAGES=(pytest xxhash numpy hypothesis ruff mypy matplotlib "redis>=5")
# program:Debian package, for the tests that use them (without one, those tests skip and say why)
TEST_TOOLS=(ccache:ccache useradd:passwd setpriv:util-linux mount:mount ar:binutils gcc:gcc g++:g++ redis-server:redis-server)
DEMO_CACHE=${CACHED_CPP_EXTENSION_BUILD_DIR:-$PWD/cached_cpp_extensions}  # the library's default root

make_venv() {  # folder, torch requirement, extra packages...
    local venv=$1 torch=$2
    shift 2
    local quiet=-q
    if [ ! -x "$venv/bin/python" ]; then
        echo "creating $venv with $torch and the tools (first time only: a few minutes of downloads)..."
        "$PYTHON" -m venv "$venv"
        quiet=""  # pip's own progress lines while it downloads
    fi
    "$venv/bin/python" -m pip install $quiet --disable-pip-version-check "$torch" ninja filelock setuptools wheel "$@"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
}

build_docs() {  # Sphinx with warnings as errors: a broken reference, include or docstring fails the build
    .venv/bin/python -m pip install -q --disable-pip-version-check "${DOC_TOOLS[@]}"
    .venv/bin/python -m sphinx -W --keep-going -q -b html docs docs/_build/html
    echo "docs: docs/_build/html/index.html"
}

missing_tools() {  # the TEST_TOOLS entries whose program is not on PATH
    local entry
    for entry in "${TEST_TOOLS[@]}"; do
        command -v "${entry%%:*}" >/dev/null || echo "$entry"
    done
}

install_test_tools() {  # apt-get install what is missing, where we are root and have apt-get; else say so
    local missing packages entry required=0
    missing=$(missing_tools)
    [ -z "$missing" ] && return 0
    packages=$(printf '%s\n' $missing | cut -d: -f2 | sort -u | tr '\n' ' ')
    packages=${packages% }
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing the test tools that are missing with apt-get: $packages..."
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null; } ||
            echo "apt-get could not install them"
        missing=$(missing_tools)
    fi
    for entry in $missing; do
        case ${entry%%:*} in
        gcc | g++) echo "not installed: ${entry%%:*}; the test suite needs it (apt-get install ${entry#*:})" >&2
                   required=1 ;;
        *) echo "not installed: ${entry%%:*} (Debian package ${entry#*:}): the tests that need it skip;" \
                "to run them, apt-get install ${entry#*:} as root and run ./dev.sh test again" ;;
        esac
    done
    [ "$required" = 0 ] || exit 1
}

case "${1:-}" in
demo)
    make_venv .venv "$CPU_TORCH" "${DEV_PACKAGES[@]}"
    if [ -n "$(ls -A "$DEMO_CACHE/example_package_ext/artifacts" 2>/dev/null)" ]; then
        echo "demo: the cache $DEMO_CACHE holds example_package_ext: a warm run (cold again after" \
             ".venv/bin/cpp-extension-tools clear example_package_ext)"
    else
        echo "demo: the cache $DEMO_CACHE has no example_package_ext yet: the first import builds the C module" \
             "(about 5 s on 2 cores)..."
    fi
    CACHED_CPP_EXTENSION_BUILD_DIR=$DEMO_CACHE .venv/bin/python -m example_package
    ;;
test)
    install_test_tools
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
