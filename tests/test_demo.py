"""``python -m example_package`` tells the story: built now, then loaded from the cache, or loaded prebuilt
from an installed wheel (where no cache root is ever set), with this run's compile count."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from example_package._demo import compiles_since, how_it_was_loaded
from tests import test_prebuilt
from tests.conftest import REPO

installed_wheel = test_prebuilt.installed_wheel  # the same fixture: a fresh venv with this repo's wheel


def _clean_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CACHED_CPP_EXTENSION_", "CCACHE_", "EXAMPLE_PACKAGE_"))
           and k not in ("CC", "CXX", "PYTHONPATH", "LD_LIBRARY_PATH")}
    return {**env, **extra}


def _demo(python: str, cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run([python, "-m", "example_package"], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    assert "Error" not in result.stderr, result.stderr
    return result.stdout


def _compiles(output: str) -> int:
    match = re.search(r"compiles this run: (\d+)", output)
    assert match, output
    return int(match.group(1))


@pytest.mark.slow
def test_a_cold_run_builds_and_the_next_one_loads_from_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "demo cache"
    env = _clean_environment(CACHED_CPP_EXTENSION_BUILD_DIR=str(cache), PYTHONPATH=str(REPO))
    first = _demo(sys.executable, tmp_path, env)
    assert "built the C module now" in first and _compiles(first) > 0, first
    assert f"cache: {cache}" in first and "cpp-extension-tools clear example_package_ext" in first
    second = _demo(sys.executable, tmp_path, env)
    assert "loaded from the cache" in second and "built the C module now" not in second, second
    assert _compiles(second) == 0
    for output in (first, second):
        assert "compiles during the workers: 0" in output
        assert output.count("(from the cache)") >= 2  # the new process, and each worker
    assert not (tmp_path / "cached_cpp_extensions").exists()  # only the named cache was used


@pytest.mark.slow
def test_from_an_installed_wheel_the_demo_says_prebuilt(installed_wheel: Path, tmp_path: Path) -> None:
    """No cache root is resolved when the prebuilt binary loads: the demo used to die with a KeyError."""
    compilers = test_prebuilt._failing_compilers(tmp_path / "bin")
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not Path(p, "nvcc").exists())
    env = _clean_environment(**compilers, PATH=path, CACHED_CPP_EXTENSION_BUILD_DIR=str(tmp_path / "cache"),
                             CACHED_CPP_EXTENSION_DISABLE_JIT="1")
    output = _demo(str(installed_wheel / "bin" / "python"), tmp_path, env)
    assert "loaded the prebuilt binary" in output and _compiles(output) == 0, output
    assert f"binary: {installed_wheel}" in output and "/prebuilt/" in output
    assert output.count("(prebuilt binary)") >= 1 and "compiles during the workers: 0" in output
    assert not (tmp_path / "cache").exists()


def _fake_package(folder: Path, binary: Path, started: float) -> ModuleType:
    package = ModuleType("fake_package")
    package.__file__ = str(folder / "__init__.py")
    package._extension = ModuleType("fake_ext")  # type: ignore[attr-defined]
    package._extension.__file__ = str(binary)  # type: ignore[attr-defined]
    package.load_started_at = started  # type: ignore[attr-defined]
    return package


def test_how_it_was_loaded_reads_the_binarys_place_and_manifest(tmp_path: Path) -> None:
    prebuilt = tmp_path / "pkg" / "prebuilt" / "ext.so"
    assert how_it_was_loaded(_fake_package(tmp_path / "pkg", prebuilt, 0.0)).kind == "prebuilt"
    module = tmp_path / "root" / "ext"
    artifact = module / "artifacts" / "k-c"
    artifact.mkdir(parents=True)
    (artifact / "manifest.json").write_text('{"created_at": 100.0, "build_seconds": 2.5}')
    (module / "builds" / "k").mkdir(parents=True)
    (module / "builds" / "k" / "a.o").write_bytes(b"")
    built = how_it_was_loaded(_fake_package(tmp_path / "pkg", artifact / "ext.so", 99.0))
    assert (built.kind, built.build_seconds, built.cache_root) == ("built", 2.5, str(tmp_path / "root"))
    assert how_it_was_loaded(_fake_package(tmp_path / "pkg", artifact / "ext.so", 101.0)).kind == "cached"
    assert compiles_since(str(module), 0.0) == 1
    assert compiles_since(str(module), time.time() + 60) == 0
