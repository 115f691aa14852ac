"""The tools of a build are resolved once, on the cold path only, and the build uses what was resolved."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cpp_extension_tools import BuildError, _loader, cached_load_torch_cpp_extension
from cpp_extension_tools._arguments import validated_request
from cpp_extension_tools._env import cuda as _cuda
from cpp_extension_tools._env import identity as _identity
from cpp_extension_tools._env.toolchain import resolve_toolchain
from tests.conftest import CompilerLog, write_module

CPP_SOURCE = 'extern "C" long cpp_part(void) { return 7; }\n'


_HOMES = {"resolve_compiler": _identity, "find_nvcc": _cuda, "find_cuda_home": _cuda}


def _counting(monkeypatch: pytest.MonkeyPatch, calls: Counter[str], name: str) -> None:
    real: Callable[..., Any] = getattr(_HOMES[name], name)

    def counted(*args: Any) -> Any:
        calls[f"{name}{args}"] += 1
        return real(*args)

    monkeypatch.setattr(_HOMES[name], name, counted)


def test_one_cold_build_resolves_each_compiler_once_and_a_hit_none(tmp_path: Path, cache_root: Path,
                                                                   compilers: CompilerLog,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sources = write_module(tmp_path / "src")
    (tmp_path / "src" / "part.cpp").write_text(CPP_SOURCE)
    sources.append(str(tmp_path / "src" / "part.cpp"))
    calls: Counter[str] = Counter()
    for name in ("resolve_compiler", "find_nvcc", "find_cuda_home"):
        _counting(monkeypatch, calls, name)
    assert cached_load_torch_cpp_extension("once_ext", sources).answer() == 42
    assert calls == {"resolve_compiler('CXX', 'c++')": 1, "resolve_compiler('CC', 'cc')": 1}
    assert len(compilers.compiles()) == len(sources)
    calls.clear()
    monkeypatch.setattr(_loader, "_memo", {})
    assert cached_load_torch_cpp_extension("once_ext", sources).answer() == 42
    assert calls == {}


def test_the_toolchain_holds_what_the_build_runs(tmp_path: Path, compilers: CompilerLog,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sources = write_module(tmp_path / "src")
    launcher = tmp_path / "launcher"
    launcher.write_text("#!/bin/sh\nexec \"$@\"\n")
    launcher.chmod(0o755)
    monkeypatch.setenv("CACHED_CPP_EXTENSION_COMPILER_LAUNCHER", f"{launcher} --tag")
    toolchain = resolve_toolchain(validated_request("tools_ext", sources, (), [], [], [], False, None))
    assert toolchain.cc_command == [compilers.cc] and toolchain.cxx_command == [compilers.cxx]
    assert toolchain.launcher == (str(launcher), "--tag")
    assert toolchain.nvcc is None and toolchain.cuda_home is None
    assert [(r.role, r.path, r.size) for r in toolchain.records] == [
        ("cxx", compilers.cxx, os.stat(compilers.cxx).st_size), ("cc", compilers.cc, os.stat(compilers.cc).st_size)]
    assert toolchain.version_commands() == {"cxx": [compilers.cxx], "cc": [compilers.cc]}
    assert toolchain.identity()["cxx"]["path"] == compilers.cxx and toolchain.identity()["nvcc"] == []


def test_a_missing_tool_fails_before_anything_is_written(tmp_path: Path, cache_root: Path, compilers: CompilerLog,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    sources = write_module(tmp_path / "src")
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(FileNotFoundError, match="CXX"):
        cached_load_torch_cpp_extension("tools_ext", sources)
    monkeypatch.setenv("CXX", compilers.cxx)
    monkeypatch.setenv("CACHED_CPP_EXTENSION_COMPILER_LAUNCHER", "'unbalanced")
    with pytest.raises(BuildError, match="not a valid command"):
        cached_load_torch_cpp_extension("tools_ext", sources)
    assert not cache_root.exists() and compilers.calls() == []


def test_cuda_tools_are_resolved_once_into_the_build_environment(tmp_path: Path, compilers: CompilerLog,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from cpp_extension_tools._build import run as _builder
    from cpp_extension_tools._key import BuildConfig

    home = tmp_path / "cuda toolkit"
    (home / "bin").mkdir(parents=True)
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    kernel = tmp_path / "kernel.cu"
    kernel.write_text("")
    launcher = tmp_path / "launcher"
    launcher.write_text("#!/bin/sh\nexec \"$@\"\n")
    launcher.chmod(0o755)
    monkeypatch.setattr(torch.version, "cuda", "12.4")  # poses as a CUDA build of torch: nothing runs nvcc here
    monkeypatch.setenv("CUDA_HOME", str(home))
    monkeypatch.setenv("CACHED_CPP_EXTENSION_COMPILER_LAUNCHER", str(launcher))
    request = validated_request("cuda_tools_ext", [str(kernel)], (), [], [], [], False, None)
    calls: Counter[str] = Counter()
    for name in ("resolve_compiler", "find_nvcc", "find_cuda_home"):
        _counting(monkeypatch, calls, name)
    toolchain = resolve_toolchain(request)
    assert calls == {"resolve_compiler('CXX', 'c++')": 1, "find_cuda_home()": 1}
    assert toolchain.nvcc == _cuda.find_nvcc()  # what find_nvcc says, from the toolkit found once
    assert (toolchain.nvcc, toolchain.cuda_home, toolchain.cc) == (str(nvcc), str(home), None)
    assert [(r.role, r.path) for r in toolchain.records] == [("cxx", compilers.cxx), ("nvcc", str(nvcc))]
    assert toolchain.version_commands()["nvcc"] == [str(nvcc)]
    calls.clear()
    env = _builder._worker_environment(BuildConfig(request, {}), toolchain, str(tmp_path / "cxx-driver.sh"))
    assert calls == {}
    assert env["CUDA_HOME"] == str(home)
    assert env["PYTORCH_NVCC"] == f"{launcher} '{nvcc}'"  # the launcher before nvcc, the path quoted

    user_nvcc = f"env NVCC_TAG=1 '{nvcc}'"  # the user's PYTORCH_NVCC is a command line: used as it is
    monkeypatch.setenv("PYTORCH_NVCC", user_nvcc)
    toolchain = resolve_toolchain(request)
    assert [(r.role, r.path) for r in toolchain.records] == [("cxx", compilers.cxx), ("nvcc", str(nvcc))]
    env = _builder._worker_environment(BuildConfig(request, {}), toolchain, str(tmp_path / "cxx-driver.sh"))
    assert env["PYTORCH_NVCC"] == f"{launcher} {user_nvcc}"


def test_cuda_sources_with_a_cpu_only_torch_fail_before_any_compiler_lookup(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.version, "cuda", None)
    kernel = tmp_path / "kernel.cu"
    kernel.write_text("")
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(BuildError, match="CPU-only build"):
        resolve_toolchain(validated_request("cpu_torch_ext", [str(kernel)], (), [], [], [], False, None))
