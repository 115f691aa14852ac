"""The arguments torch's load() has and the native API gained (issue 17): keyword-only after ``sources``,
``is_python_module``, ``is_standalone``, ``keep_intermediates``, ``use_pch``; their checks, their place in
the cache key, and what each builds and returns. Compile counts come from the logging compilers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import cpp_extension_tools as cet
from cpp_extension_tools._arguments import BuildRequest, validated_request
from cpp_extension_tools._build import worker as _build_worker
from cpp_extension_tools._env import cuda as _cuda
from cpp_extension_tools._key import BuildConfig
from tests.conftest import CompilerLog, last_json, run_python, write_module

_ENVIRONMENT = {"torch": {"version": "2.5.0", "cuda": None}, "python": {"version": "3.12.1", "abi": "cp312"},
                "cxx": "c++", "cc": "cc", "compiler_environment": {}}


def _source(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / "src" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


# --- the signature and the checks: nothing is built ---

def test_a_positional_call_says_the_arguments_are_keyword_only(tmp_path: Path) -> None:
    source = _source(tmp_path, "a.c", "int a;\n")
    with pytest.raises(TypeError, match="keyword-only") as caught:
        cet.cached_load_torch_cpp_extension("ext", [source], ["-O3"])  # type: ignore[call-overload]
    message = str(caught.value)
    assert "3 were given" in message and "torch.utils.cpp_extension.load" in message
    assert "extra_cflags, extra_cuda_cflags, extra_ldflags, extra_include_paths" in message
    assert not list(tmp_path.glob("cached_cpp_extensions"))


@pytest.mark.parametrize("argument", ["is_python_module", "is_standalone", "keep_intermediates", "use_pch"])
def test_each_new_argument_must_be_a_bool(tmp_path: Path, argument: str) -> None:
    source = _source(tmp_path, "a.c", "int a;\n")
    with pytest.raises(TypeError, match=f"^{argument}: expected a bool, got int"):
        cet.cached_load_torch_cpp_extension("ext", [source], build_directory=tmp_path / "cache",
                                            **{argument: 1})  # type: ignore[call-overload]
    assert not (tmp_path / "cache").exists()


def test_a_module_cannot_be_an_executable(tmp_path: Path) -> None:
    source = _source(tmp_path, "a.c", "int a;\n")
    with pytest.raises(ValueError, match="is_python_module=True and is_standalone=True"):
        cet.cached_load_torch_cpp_extension("ext", [source], is_standalone=True, build_directory=tmp_path / "c")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("kind", [{"is_python_module": False}, {"is_python_module": False, "is_standalone": True}])
def test_a_prebuilt_path_is_for_modules_only(tmp_path: Path, kind: dict[str, bool]) -> None:
    source = _source(tmp_path, "a.c", "int a;\n")
    named = "is_standalone=True" if kind.get("is_standalone") else "is_python_module=False"
    with pytest.raises(ValueError, match=f"prebuilt_path and {named}"):
        cet.cached_load_torch_cpp_extension("ext", [source], prebuilt_path=tmp_path, build_directory=tmp_path / "c",
                                            **kind)  # type: ignore[call-overload]
    assert not (tmp_path / "c").exists()


def test_the_defaults_leave_the_key_as_it_was(tmp_path: Path) -> None:
    source = _source(tmp_path, "a.c", "int a;\n")

    def key(**kind: bool) -> str:
        request = validated_request("ext", [source], (), [], [], [], False, None, **kind)  # type: ignore[arg-type]
        return BuildConfig(request, _ENVIRONMENT).key

    plain = BuildRequest("ext", (source,), (), (), (), (), False, False)
    assert key() == BuildConfig(plain, _ENVIRONMENT).key
    assert "is_python_module" not in BuildConfig(plain, _ENVIRONMENT).describe()
    # What does not change the binary stays out of the key; what does, changes it.
    assert key(keep_intermediates=False) == key(use_pch=False) == key()
    keys = {key(), key(is_python_module=False), key(is_python_module=False, is_standalone=True)}
    assert len(keys) == 3


# --- what each kind builds and returns: real builds of small C sources ---

_LIBRARY = """\
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void loaded(void) {
    const char *mark = getenv("LIBRARY_MARK");
    FILE *f = mark ? fopen(mark, "a") : NULL;
    if (f) { fputs("loaded\\n", f); fclose(f); }
}
int plain_library_answer(void) { return 42; }
"""

_LOAD_LIBRARY = """
import json, sys
import torch, cpp_extension_tools as c
spec = json.loads(sys.argv[1])
first = c.cached_load_torch_cpp_extension("plain_lib", spec["sources"], is_python_module=False,
                                          build_directory=spec["root"])
second = c.cached_load_torch_cpp_extension("plain_lib", spec["sources"], is_python_module=False,
                                           build_directory=spec["root"])
print(json.dumps({"path": first, "same": first == second, "libraries": sorted(torch.ops.loaded_libraries)}))
"""


def _run(code: str, spec: dict[str, object], env: dict[str, str]) -> dict[str, object]:
    result = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=600)
    assert result.returncode == 0, result.stderr
    report = last_json(result.stdout)
    assert isinstance(report, dict), result.stdout
    return report


@pytest.mark.slow
def test_a_plain_library_is_cached_loaded_once_and_its_path_returned(tmp_path: Path, compilers: CompilerLog) -> None:
    spec = {"sources": [_source(tmp_path, "plain.c", _LIBRARY)], "root": str(tmp_path / "cache")}
    mark = tmp_path / "loaded.txt"
    env = {**compilers.env, "LIBRARY_MARK": str(mark)}
    first = _run(_LOAD_LIBRARY, spec, env)
    path = str(first["path"])
    assert first["same"] and path.startswith(str(tmp_path / "cache")) and path.endswith("plain_lib.so")
    assert len(first["libraries"]) == 1  # type: ignore[arg-type]
    assert mark.read_text() == "loaded\n"  # two calls, one load
    assert len(compilers.compiles()) == 1
    compilers.reset()
    second = _run(_LOAD_LIBRARY, spec, env)
    assert second["path"] == path and compilers.calls() == []  # a fresh process: a cache hit
    assert mark.read_text() == "loaded\n" * 2


_PROGRAM = """\
#include <stdio.h>
int main(int argc, char **argv) { (void)argv; printf("standalone %d\\n", argc); return 0; }
"""


@pytest.mark.slow
def test_an_executable_is_linked_cached_and_not_run(tmp_path: Path, compilers: CompilerLog) -> None:
    source = _source(tmp_path, "main.c", _PROGRAM)
    code = f"""
        import json, cpp_extension_tools as c
        path = c.cached_load_torch_cpp_extension("standalone_prog", [{source!r}], is_python_module=False,
                                                 is_standalone=True, build_directory={str(tmp_path / 'cache')!r})
        print(json.dumps(path))
    """
    path = last_json(run_python(code, env=compilers.env).stdout)
    assert isinstance(path, str) and os.path.basename(path) == "standalone_prog"
    assert os.access(path, os.X_OK)
    assert subprocess.run([path, "x"], capture_output=True, text=True, check=True).stdout == "standalone 2\n"
    assert len(compilers.compiles()) == 1 and not any(" -shared" in line for line in compilers.calls())
    compilers.reset()
    assert last_json(run_python(code, env=compilers.env).stdout) == path and compilers.calls() == []


@pytest.mark.slow
def test_without_intermediates_only_the_artifact_stays(tmp_path: Path, compilers: CompilerLog) -> None:
    sources = write_module(tmp_path / "src")
    root = tmp_path / "cache"
    code = f"""
        import cpp_extension_tools as c
        m = c.cached_load_torch_cpp_extension("lean_ext", {sources!r}, keep_intermediates=False,
                                              build_directory={str(root)!r})
        assert m.answer() == 42
    """
    run_python(code, env=compilers.env)
    assert len(compilers.compiles()) == len(sources)
    builds = root / "lean_ext" / "builds"
    assert not builds.exists() or list(builds.iterdir()) == []
    assert len(list((root / "lean_ext" / "artifacts").glob("*/lean_ext.so"))) == 1
    compilers.reset()
    run_python(code, env=compilers.env)  # the same key as keep_intermediates=True: a hit
    assert compilers.calls() == []


# --- a rebuild in the same process ---

@pytest.mark.slow
def test_a_c_module_rebuilt_in_process_is_the_new_one(tmp_path: Path, compilers: CompilerLog) -> None:
    folder = tmp_path / "src"
    code = f"""
        import cpp_extension_tools as c
        from tests.conftest import write_module
        from pathlib import Path
        root, folder = {str(tmp_path / 'cache')!r}, Path({str(folder)!r})
        old = c.cached_load_torch_cpp_extension("reload_c", write_module(folder), build_directory=root)
        new = c.cached_load_torch_cpp_extension("reload_c", write_module(folder, functions={{"answer": 43}}),
                                                build_directory=root)
        assert new is not old and (old.answer(), new.answer()) == (42, 43), (old.answer(), new.answer())
        assert new.__file__ != old.__file__
    """
    run_python(code, env=compilers.env, cwd=Path(__file__).parent.parent)


_PYBIND = """\
#include <pybind11/pybind11.h>
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {{ m.def("answer", [] {{ return {value}; }}); }}
"""


@pytest.mark.slow
def test_a_pybind11_module_rebuilt_in_process_is_the_new_one(tmp_path: Path) -> None:
    source = tmp_path / "src" / "bound.cpp"
    source.parent.mkdir()
    root = str(tmp_path / "cache")
    code = f"""
        import json, pathlib, cpp_extension_tools as c
        from cpp_extension_tools import _loader
        source, root = pathlib.Path({str(source)!r}), {root!r}
        def load():
            return c.cached_load_torch_cpp_extension("reload_pb", [str(source)], build_directory=root)
        source.write_text({_PYBIND.format(value=1)!r})
        old = load()
        source.write_text({_PYBIND.format(value=2)!r})
        new = load()
        report = {{"old": old.answer(), "new": new.answer(), "same": new is old}}
        # Without forgetting pybind11's cached module, the safety net says so instead of returning the old one.
        _loader._forget_pybind11_module = lambda name: None
        source.write_text({_PYBIND.format(value=3)!r})
        try:
            report["third"] = load().answer()
        except ImportError as error:
            report["error"] = str(error)
        print(json.dumps(report))
    """
    report = last_json(run_python(code).stdout)
    assert isinstance(report, dict)
    assert (report["old"], report["new"], report["same"]) == (1, 2, False), report
    assert "third" not in report and "Restart the process" in report["error"], report
    assert "reload_pb.so" in report["error"] and "/proc/self/fd" not in report["error"], report
    # A fresh process loads the last build, compiling nothing more.
    fresh = f"""
        import json, cpp_extension_tools as c
        print(json.dumps(c.cached_load_torch_cpp_extension("reload_pb", [{str(source)!r}],
                                                           build_directory={root!r}).answer()))
    """
    assert last_json(run_python(fresh).stdout) == 3


# --- CUDA wheels' header folders ---

def _fake_torch(site: Path, cuda: str | None) -> SimpleNamespace:
    (site / "torch").mkdir(parents=True, exist_ok=True)
    (site / "torch" / "__init__.py").write_text("")
    return SimpleNamespace(__file__=str(site / "torch" / "__init__.py"), version=SimpleNamespace(cuda=cuda))


def test_a_cuda_wheels_nvidia_header_folders_are_found(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    for library in ("cusparse", "cublas", "cu13"):
        (site / "nvidia" / library / "include").mkdir(parents=True)
    (site / "nvidia" / "nccl" / "lib").mkdir(parents=True)  # no headers: not listed
    (site / "nvidia" / "__init__.py").write_text("")
    expected = [str(site / "nvidia" / lib / "include") for lib in ("cu13", "cublas", "cusparse")]
    assert _cuda.wheel_include_folders(_fake_torch(site, "13.0")) == expected
    assert _cuda.wheel_include_folders(_fake_torch(site, None)) == []  # a CPU torch
    assert _cuda.wheel_include_folders(_fake_torch(tmp_path / "elsewhere", "13.0")) == []  # not from the wheels


def test_the_wheel_header_folders_come_after_the_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.utils.cpp_extension as cpp_extension

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(_build_worker, "_cuda_arch_list", lambda: "8.0")
    monkeypatch.setattr(_build_worker, "_escape_torch_ninja_files", lambda module: None)
    monkeypatch.setattr(_cuda, "wheel_include_folders", lambda torch: ["/site/nvidia/cublas/include"])
    spec = {"name": "k", "sources": [str(tmp_path / "k.cu")], "cflags": [], "cuda_cflags": [], "ldflags": [],
            "include_paths": ["/user/include"], "build_directory": str(tmp_path), "with_cuda": True}
    _build_worker._build_with_torch(spec, {})
    assert calls[0]["extra_include_paths"] == ["/user/include", "/site/nvidia/cublas/include"]
    _build_worker._build_with_torch({**spec, "with_cuda": False}, {})  # a CPU build gets none
    assert calls[1]["extra_include_paths"] == ["/user/include"]


_CUDA_CONTEXT = """\
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("sm_count", &sm_count); }
"""


@pytest.mark.slow
@pytest.mark.cuda_build
def test_a_source_including_cuda_context_builds_with_a_cuda_wheel(tmp_path: Path) -> None:
    import torch

    if torch.version.cuda is None or _cuda.find_nvcc() is None:
        pytest.skip("needs a CUDA torch and nvcc")
    source = _source(tmp_path, "context.cu", _CUDA_CONTEXT)
    module = cet.cached_load_torch_cpp_extension("cuda_context_ext", [source], build_directory=tmp_path / "cache")
    assert callable(module.sm_count)
