"""Bad arguments fail before anything is built or written, naming the argument."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from cpp_extension_tools import BuildError, cached_load_torch_cpp_extension, get_cpp_sources_list_from_folder
from tests.conftest import write_module


@pytest.fixture
def module_sources(tmp_path: Path) -> list[str]:
    return write_module(tmp_path / "src")


CASES = [
    ({"name": 3}, TypeError, "name"),
    ({"name": "not-an-identifier"}, ValueError, "name"),
    ({"name": "class"}, ValueError, "keyword"),
    ({"name": "café"}, ValueError, "name"),
    ({"sources": []}, ValueError, "sources"),
    ({"sources": ["/nonexistent/file.c"]}, FileNotFoundError, "sources"),
    ({"sources": ["{tmp}/src/module.txt"]}, ValueError, "extension"),
    ({"sources": 5}, TypeError, "sources"),
    ({"sources": [5]}, TypeError, "sources"),
    ({"sources": ["{tmp}/src"]}, ValueError, "sources"),
    ({"sources": ["{tmp}/src/module.c", "{tmp}/src/module.c"]}, ValueError, "twice"),
    ({"extra_include_paths": ["/nonexistent/include"]}, FileNotFoundError, "extra_include_paths"),
    ({"extra_cflags": "-O2"}, TypeError, "extra_cflags"),
    ({"extra_cflags": [1]}, TypeError, "extra_cflags"),
    ({"extra_ldflags": "-lm"}, TypeError, "extra_ldflags"),
    ({"extra_cuda_cflags": "-O2"}, TypeError, "extra_cuda_cflags"),
    ({"verbose": "yes"}, TypeError, "verbose"),
    ({"with_cuda": "yes"}, TypeError, "with_cuda"),
    ({"build_directory": 5}, TypeError, "build_directory"),
    ({"build_directory": ""}, ValueError, "build_directory"),
]


@pytest.mark.parametrize(("overrides", "error", "mentions"), CASES,
                         ids=[f"{next(iter(c[0]))}-{i}" for i, c in enumerate(CASES)])
def test_bad_argument_is_rejected_before_anything_is_written(
        tmp_path: Path, module_sources: list[str], overrides: dict[str, object], error: type[Exception],
        mentions: str) -> None:
    (tmp_path / "src" / "module.txt").write_text("")
    root = tmp_path / "cache"
    kwargs: dict[str, object] = {"name": "ext", "sources": module_sources, "build_directory": str(root)}
    for key, value in overrides.items():
        if isinstance(value, list):
            value = [v.format(tmp=tmp_path) if isinstance(v, str) else v for v in value]
        kwargs[key] = value
    with pytest.raises(error, match=mentions):
        cached_load_torch_cpp_extension(**kwargs)  # type: ignore[arg-type]
    assert not root.exists()


def test_sources_listed_from_folder_are_sorted_and_filtered(tmp_path: Path) -> None:
    for name in ("b.cpp", "a.c", "k.cu", "x.h", "notes.txt", "c.cc", "d.cxx"):
        (tmp_path / name).write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.c").write_text("")
    flat = get_cpp_sources_list_from_folder(tmp_path)
    assert [Path(p).name for p in flat] == ["a.c", "b.cpp", "c.cc", "d.cxx", "k.cu"]
    assert all(Path(p).is_absolute() for p in flat)
    deep = get_cpp_sources_list_from_folder(tmp_path, recursive=True)
    assert str(tmp_path / "sub" / "deep.c") in deep
    with pytest.raises(FileNotFoundError, match="folder"):
        get_cpp_sources_list_from_folder(tmp_path / "missing")


def test_build_error_pickles_with_all_fields() -> None:
    error = BuildError("boom", name="ext", command="cc -c x.c", log_path="/tmp/log", compiler_output="x.c:1: error")
    clone = pickle.loads(pickle.dumps(error))
    assert isinstance(clone, RuntimeError)
    assert (clone.message, clone.name, clone.command, clone.log_path, clone.compiler_output) == \
        ("boom", "ext", "cc -c x.c", "/tmp/log", "x.c:1: error")
