"""The ninja file written in the caller's process (CPU builds): same text as torch's load(), reused, and
a fallback to the worker's load() when torch's private generator is not as expected."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest

from cpp_extension_tools import cached_load_torch_cpp_extension
from tests.conftest import CompilerLog, last_json, run_python, write_module


def _build_folder(cache: Path, name: str) -> Path:
    (folder,) = (cache / name / "builds").iterdir()
    return folder


def test_ninja_file_is_the_one_torchs_load_writes(tmp_path: Path, compilers: CompilerLog) -> None:
    include = tmp_path / "include"
    include.mkdir()
    sources = write_module(tmp_path / "src", functions={"answer": 42, "other": 7})
    flags = ["-O2", "-DSOMETHING=1", "-Wall"]
    cached_load_torch_cpp_extension("same_text", sources, extra_include_paths=[str(include)],
                                    extra_cflags=flags, extra_ldflags=["-lm"],
                                    build_directory=str(tmp_path / "cache"))
    ours = (_build_folder(tmp_path / "cache", "same_text") / "build.ninja").read_text()
    (driver_line,) = [line for line in ours.splitlines() if line.startswith("cxx = ")]
    driver = shlex.split(driver_line[len("cxx = "):])[0]
    reference = tmp_path / "torch_build"
    reference.mkdir()
    run_python(f"""
        import torch.utils.cpp_extension as cpp_extension
        cpp_extension.load("same_text", {sources!r}, extra_cflags={flags!r}, extra_ldflags=["-lm"],
                           extra_include_paths=[{str(include)!r}], build_directory={str(reference)!r},
                           is_python_module=False)
    """, env={"CXX": driver, "TORCH_NO_COMPILER_WRAPPER": "1"})
    # The one intended difference: depfiles are kept and read by the worker (ninja misreads quotes in them).
    expected = (reference / "build.ninja").read_text().replace("  deps = gcc\n", "")
    assert "deps = gcc" in (reference / "build.ninja").read_text()
    assert ours == expected


FAKE_TORCH = 'raise ImportError("the build worker imported torch")\n'


def test_cpu_build_and_rebuild_need_no_torch_in_the_worker(tmp_path: Path, compilers: CompilerLog) -> None:
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text(FAKE_TORCH)
    sources = write_module(tmp_path / "src", functions={"answer": 42, "other": 7})
    code = f"""
        import json, os, sys
        import torch
        from cpp_extension_tools import cached_load_torch_cpp_extension
        # Any process started from here that imports torch gets the fake one, and fails.
        os.environ["PYTHONPATH"] = {str(fake)!r} + os.pathsep + os.environ["PYTHONPATH"]
        module = cached_load_torch_cpp_extension("no_torch", {sources!r},
                                                 build_directory={str(tmp_path / "cache")!r})
        print(json.dumps([module.answer(), "torch.utils.cpp_extension" in sys.modules]))
    """
    assert last_json(run_python(code).stdout) == [42, True]  # the first build generates build.ninja here
    write_module(tmp_path / "src", functions={"answer": 43, "other": 7})
    compilers.reset()
    # The rebuild reuses build.ninja: torch.utils.cpp_extension is not even imported.
    assert last_json(run_python(code).stdout) == [43, False]
    assert compilers.compiled_sources() == ["answer.c"]


def test_ninja_file_is_regenerated_when_what_it_was_made_from_changed(tmp_path: Path,
                                                                       compilers: CompilerLog) -> None:
    sources = write_module(tmp_path / "src")
    cache = tmp_path / "cache"
    cached_load_torch_cpp_extension("regenerated", sources, build_directory=str(cache))
    folder = _build_folder(cache, "regenerated")
    record_path = folder / "cpp_extension_tools_ninja.json"
    record = json.loads(record_path.read_text())
    record["torch"][1] = "/a/torch/install/that/moved"
    record_path.write_text(json.dumps(record))
    ninja_file = folder / "build.ninja"
    ninja_file.write_text(ninja_file.read_text() + "# stale\n")
    write_module(tmp_path / "src", functions={"answer": 1})
    code = f"""
        import json
        from cpp_extension_tools import cached_load_torch_cpp_extension
        module = cached_load_torch_cpp_extension("regenerated", {sources!r}, build_directory={str(cache)!r})
        print(json.dumps(module.answer()))
    """
    assert last_json(run_python(code).stdout) == 1
    assert "# stale" not in ninja_file.read_text()
    assert json.loads(record_path.read_text())["torch"][1] != "/a/torch/install/that/moved"


def test_unexpected_torch_generator_falls_back_to_torchs_load(tmp_path: Path, compilers: CompilerLog,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.delattr(cpp_extension, "_write_ninja_file_to_build_library")
    sources = write_module(tmp_path / "src")
    module = cached_load_torch_cpp_extension("fallback", sources, build_directory=str(tmp_path / "cache"))
    assert module.answer() == 42
    folder = _build_folder(tmp_path / "cache", "fallback")
    assert (folder / "build.ninja").is_file()  # written by load() in the worker
    assert not (folder / "cpp_extension_tools_ninja.json").exists()
    assert not [name for name in os.listdir(folder) if ".generated-" in name]


def test_a_rebuild_with_the_same_compilers_does_not_ask_their_versions_again(tmp_path: Path,
                                                                            compilers: CompilerLog) -> None:
    cache = tmp_path / "cache"
    functions = {"answer": 1, "other": 2}
    cached_load_torch_cpp_extension("versions", write_module(tmp_path / "src", functions=functions),
                                    build_directory=str(cache))
    assert any(line.endswith(" --version") for line in compilers.calls())
    (first,) = (cache / "versions" / "artifacts").iterdir()
    recorded = json.loads((first / "manifest.json").read_text())["details"]["compiler_versions"]
    assert set(recorded) == {"cc", "cxx"} and all(recorded.values())

    compilers.reset()
    functions["answer"] = 3
    module = cached_load_torch_cpp_extension("versions", write_module(tmp_path / "src", functions=functions),
                                             build_directory=str(cache))
    assert module.answer() == 3
    assert compilers.compiled_sources() == ["answer.c"]
    assert not [line for line in compilers.calls() if line.endswith(" --version")]
    manifests = [json.loads((a / "manifest.json").read_text()) for a in (cache / "versions" / "artifacts").iterdir()]
    assert [m["details"]["compiler_versions"] for m in manifests] == [recorded, recorded]
