"""Prebuilt binaries: the compatibility rules, loading with no compiler, the fallback to a JIT build (and
its refusal with CACHED_CPP_EXTENSION_DISABLE_JIT=1), and a real wheel installed into a fresh venv."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from cpp_extension_tools import BuildError, cached_load_torch_cpp_extension, get_portable_cpp_cflags
from cpp_extension_tools._cache import prebuilt as _prebuilt
from cpp_extension_tools._env import cpu as _cpu
from cpp_extension_tools._env import cuda as _cuda
from cpp_extension_tools._env import identity as _identity
from cpp_extension_tools.setuptools_build import PrebuiltExtension, build_prebuilt
from tests.conftest import REPO, CompilerLog, write_module


def _failing_compilers(folder: Path) -> dict[str, str]:
    """CC and CXX that fail loudly, as on a machine without a compiler."""
    folder.mkdir(exist_ok=True)
    tool = folder / "no-compiler"
    tool.write_text("#!/bin/sh\necho 'no compiler on this machine' >&2\nexit 1\n")
    tool.chmod(0o755)
    return {"CC": str(tool), "CXX": str(tool)}


def _build_prebuilt(tmp_path: Path, name: str, value: int) -> tuple[list[str], Path]:
    sources = write_module(tmp_path / "src", functions={"answer": value})
    folder = tmp_path / "prebuilt"
    build_prebuilt(PrebuiltExtension(name, package="unused", sources=sources), str(folder))
    return sources, folder


# -- the rules -------------------------------------------------------------------

def _record(**changes: Any) -> dict[str, Any]:
    record = {"format": 1, "name": "m", "torch": _identity.torch_identity(), "python": _identity.python_identity(),
              "cpu_baseline": "x86-64", "with_cuda": False, "cuda_archs": None}
    record.update(changes)
    return record


def test_a_binary_is_usable_only_with_the_same_torch_python_and_a_capable_cpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert _prebuilt.unusable_reason(_record(), "m") == ""
    assert "another module" in _prebuilt.unusable_reason(_record(), "other")
    other_torch = {**_identity.torch_identity(), "version": "1.0.0"}
    assert "torch 1.0.0" in _prebuilt.unusable_reason(_record(torch=other_torch), "m")
    other_abi = {**_identity.torch_identity(), "cxx11_abi": not _identity.torch_identity()["cxx11_abi"]}
    assert "cxx11_abi" in _prebuilt.unusable_reason(_record(torch=other_abi), "m")
    other_python = {**_identity.python_identity(), "ext_suffix": ".cpython-39-x86_64-linux-gnu.so"}
    assert "cpython-39" in _prebuilt.unusable_reason(_record(python=other_python), "m")

    monkeypatch.setattr(_cpu, "cpu_features", lambda: frozenset({"sse4_2", "popcnt"}))
    reason = _prebuilt.unusable_reason(_record(cpu_baseline="x86-64-v2"), "m")
    assert "x86-64-v2" in reason and "ssse3" in reason
    monkeypatch.setattr(_cpu, "cpu_features", lambda: _cpu.BASELINE_FEATURES["x86-64-v3"])
    assert _prebuilt.unusable_reason(_record(cpu_baseline="x86-64-v3"), "m") == ""
    assert "avx512f" in _prebuilt.unusable_reason(_record(cpu_baseline="x86-64-v4"), "m")
    assert "unknown baseline" in _prebuilt.unusable_reason(_record(cpu_baseline="native"), "m")


def test_cuda_code_needs_ptx_or_a_known_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _prebuilt.unusable_reason(_record(with_cuda=True, cuda_archs="8.0;9.0+PTX"), "m") == ""
    monkeypatch.setattr(_cuda, "_initialized_device_capability", lambda: None)
    assert "not known" in _prebuilt.unusable_reason(_record(with_cuda=True, cuda_archs="8.0;9.0"), "m")
    monkeypatch.setattr(_cuda, "_initialized_device_capability", lambda: "9.0")
    assert _prebuilt.unusable_reason(_record(with_cuda=True, cuda_archs="8.0;9.0"), "m") == ""
    monkeypatch.setattr(_cuda, "_initialized_device_capability", lambda: "8.6")
    assert "8.6" in _prebuilt.unusable_reason(_record(with_cuda=True, cuda_archs="8.0;9.0"), "m")
    assert "unrecorded" in _prebuilt.unusable_reason(_record(with_cuda=True, cuda_archs=None), "m")


# -- loading ---------------------------------------------------------------------

def test_a_prebuilt_binary_loads_without_a_compiler(tmp_path: Path, cache_root: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    sources, folder = _build_prebuilt(tmp_path, "shipped", 11)
    record = json.loads((folder / "shipped.json").read_text())
    assert record["cpu_baseline"] == get_portable_cpp_cflags()[1].split("=")[1]
    assert record["torch"]["version"] == torch.__version__
    for key, value in _failing_compilers(tmp_path / "bin").items():
        monkeypatch.setenv(key, value)
    module = cached_load_torch_cpp_extension("shipped", sources, prebuilt_path=folder)
    assert module.answer() == 11
    assert Path(module.__file__).parent == folder
    assert not cache_root.exists()  # nothing was built or cached
    assert cached_load_torch_cpp_extension("shipped", sources, prebuilt_path=folder) is module


def test_an_unusable_prebuilt_binary_is_built_from_source_with_one_warning(
        tmp_path: Path, cache_root: Path, compilers: CompilerLog, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    sources, folder = _build_prebuilt(tmp_path, "fallback", 12)
    monkeypatch.setenv("CACHED_CPP_EXTENSION_TORCH_IDENTITY", "torch-from-the-future")
    compilers.reset()
    with caplog.at_level(logging.INFO, logger="cpp_extension_tools"):
        module = cached_load_torch_cpp_extension("fallback", sources, prebuilt_path=folder)
    assert module.answer() == 12
    assert Path(module.__file__).parent != folder
    assert len(compilers.compiles()) == len(sources)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "torch-from-the-future" in warnings[0] and "building from source" in warnings[0]


def test_with_jit_disabled_an_unusable_prebuilt_binary_is_an_error(tmp_path: Path, cache_root: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sources, folder = _build_prebuilt(tmp_path, "nojit", 13)
    monkeypatch.setenv("CACHED_CPP_EXTENSION_DISABLE_JIT", "1")
    assert cached_load_torch_cpp_extension("nojit", sources, prebuilt_path=folder).answer() == 13
    monkeypatch.setenv("CACHED_CPP_EXTENSION_TORCH_IDENTITY", "posed")
    with pytest.raises(BuildError) as raised:
        cached_load_torch_cpp_extension("nojit", sources, prebuilt_path=folder)
    message = str(raised.value)
    assert "CACHED_CPP_EXTENSION_DISABLE_JIT=1" in message and "posed" in message
    with pytest.raises(BuildError, match="no prebuilt_path was given"):
        cached_load_torch_cpp_extension("nojit", sources)
    assert not (cache_root / "nojit" / "artifacts").exists() or not any((cache_root / "nojit" / "artifacts").iterdir())


def test_a_damaged_or_foreign_prebuilt_binary_is_not_loaded(tmp_path: Path) -> None:
    _, folder = _build_prebuilt(tmp_path, "damaged", 14)
    with open(folder / "damaged.so", "ab") as f:
        f.write(b"\0")
    library, why = _prebuilt.find_prebuilt(str(folder), "damaged")
    assert library is None and "damaged" in why
    assert "no prebuilt binary" in _prebuilt.find_prebuilt(str(folder), "other_name")[1]
    (folder / "damaged.json").write_text("{not json")
    assert "unreadable" in _prebuilt.find_prebuilt(str(folder), "damaged")[1]


def test_prebuilt_binaries_refuse_native_flags(tmp_path: Path) -> None:
    sources = write_module(tmp_path / "src")
    with pytest.raises(ValueError, match="-march=native"):
        build_prebuilt(PrebuiltExtension("native_one", package="p", sources=sources,
                                         extra_cflags=["-O2", "-march=native"]), str(tmp_path / "out"))


# -- a real wheel ------------------------------------------------------------------

IMPORT_EXAMPLE = """
import json, os, sys
{first}
import example_package
print(json.dumps({{"file": example_package._extension.__file__, "answer": example_package.Add42ToInteger(1),
                  "torch_first": {torch_first}}}))
"""


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel of this repo installed; torch and the other dependencies come from the
    test's own environment through a .pth file (installing torch again would take minutes)."""
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", str(REPO),
                    "-w", str(folder / "dist")], check=True, cwd=folder, capture_output=True, timeout=900)
    (wheel,) = (folder / "dist").glob("*.whl")
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "outer_environment.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    str(wheel)], check=True, capture_output=True, timeout=600)
    return venv


def _in_venv(venv: Path, code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not Path(p, "nvcc").exists())
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH")}
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, cwd=cwd,
                          env={**clean, "PATH": path, **env}, timeout=600)


@pytest.mark.slow
def test_the_wheel_carries_the_binary_and_no_torch_library(installed_wheel: Path) -> None:
    (wheel,) = (installed_wheel.parent / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "example_package/prebuilt/example_package_ext.so" in names
    assert "example_package/prebuilt/example_package_ext.json" in names
    assert not [n for n in names if "libtorch" in n or "libc10" in n]
    assert f"-{sys.implementation.cache_tag.replace('cpython-', 'cp')}-" in wheel.name  # tagged as binary


@pytest.mark.slow
@pytest.mark.parametrize("torch_first", [True, False])
def test_the_installed_wheel_loads_its_binary_without_compilers(installed_wheel: Path, tmp_path: Path,
                                                                torch_first: bool) -> None:
    env = {**_failing_compilers(tmp_path / "bin"), "CACHED_CPP_EXTENSION_BUILD_DIR": str(tmp_path / "cache"),
           "CACHED_CPP_EXTENSION_DISABLE_JIT": "1"}
    code = IMPORT_EXAMPLE.format(first="import torch" if torch_first else "", torch_first=torch_first)
    result = _in_venv(installed_wheel, code, env, tmp_path)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["answer"] == 43
    assert loaded["file"].startswith(str(installed_wheel)) and "/prebuilt/" in loaded["file"]
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_the_installed_wheel_builds_from_source_for_another_torch(installed_wheel: Path, tmp_path: Path) -> None:
    env = {"CACHED_CPP_EXTENSION_BUILD_DIR": str(tmp_path / "cache"),
           "CACHED_CPP_EXTENSION_TORCH_IDENTITY": "another-torch",
           "EXAMPLE_PACKAGE_VERBOSE": "1"}  # the library logs; verbose=True shows its log without set-up
    code = IMPORT_EXAMPLE.format(first="", torch_first=False)
    result = _in_venv(installed_wheel, code, env, tmp_path)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["file"].startswith(str(tmp_path / "cache"))
    assert "building from source instead of using the prebuilt binary" in result.stderr
    assert "another-torch" in result.stderr

    refused = _in_venv(installed_wheel, code, {**env, **_failing_compilers(tmp_path / "bin"),
                                               "CACHED_CPP_EXTENSION_BUILD_DIR": str(tmp_path / "other"),
                                               "CACHED_CPP_EXTENSION_DISABLE_JIT": "1"}, tmp_path)
    assert refused.returncode != 0
    assert "CACHED_CPP_EXTENSION_DISABLE_JIT=1" in refused.stderr and "another-torch" in refused.stderr


def test_torch_arch_list_comes_from_torchs_build_flags_with_ptx_for_the_newest() -> None:
    """Shared by builds without a GPU, prebuilt wheels and `info`: torch's own flags, no GPU needed."""
    from types import SimpleNamespace

    from cpp_extension_tools._env.cuda import torch_arch_list

    def fake(flags: str) -> Any:
        return SimpleNamespace(_C=SimpleNamespace(_cuda_getArchFlags=lambda: flags))

    assert torch_arch_list(fake("sm_75 sm_80 sm_90 sm_90a compute_90 sm_120")) == ["7.5", "8.0", "9.0", "12.0+PTX"]
    assert torch_arch_list(fake("")) == []
    assert torch_arch_list(SimpleNamespace(_C=SimpleNamespace())) == []  # a CPU-only torch has no such function
