"""Bad arguments fail before anything is built or written, naming the argument."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest

from cpp_extension_tools import BuildError, cached_load_torch_cpp_extension, get_cpp_sources_list_from_folder
from cpp_extension_tools import _key as _config
from cpp_extension_tools._arguments import BuildRequest, validated_request
from cpp_extension_tools._key import BuildConfig
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


def test_sources_listed_from_folder_leave_out_what_exclude_matches(tmp_path: Path) -> None:
    for relative in ("main.cpp", "main_test.cpp", "util.c", "other_module/a.cpp", "other_module/deep/b.cu",
                     "sub/keep.cc", "sub/keep_test.cpp"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("")

    def listed(**kwargs: object) -> list[str]:
        found = get_cpp_sources_list_from_folder(tmp_path, **kwargs)  # type: ignore[arg-type]
        return [Path(p).relative_to(tmp_path).as_posix() for p in found]

    everything = listed(recursive=True)
    assert everything == ["main.cpp", "main_test.cpp", "other_module/a.cpp", "other_module/deep/b.cu",
                          "sub/keep.cc", "sub/keep_test.cpp", "util.c"]
    # Patterns match the path relative to the folder; "*" crosses folders, as fnmatch's does.
    assert listed(recursive=True, exclude=("*_test.cpp", "other_module/*")) == ["main.cpp", "sub/keep.cc", "util.c"]
    assert listed(recursive=True, exclude=["sub/*.cc"]) == [p for p in everything if p != "sub/keep.cc"]
    assert listed(exclude=("main*",)) == ["util.c"]  # without recursive=True, as before: this folder only
    assert listed(recursive=True, exclude=()) == everything
    assert listed(recursive=True, exclude=("/abs/*", "MAIN.cpp")) == everything  # case-sensitive, as suffixes are
    with pytest.raises(TypeError, match="exclude: expected a list of glob patterns, got a single str"):
        listed(exclude="*_test.cpp")
    with pytest.raises(TypeError, match="exclude: expected str patterns"):
        listed(exclude=[3])


def test_build_error_pickles_with_all_fields() -> None:
    error = BuildError("boom", name="ext", command="cc -c x.c", log_path="/tmp/log", compiler_output="x.c:1: error")
    clone = pickle.loads(pickle.dumps(error))
    assert isinstance(clone, RuntimeError)
    assert (clone.message, clone.name, clone.command, clone.log_path, clone.compiler_output) == \
        ("boom", "ext", "cc -c x.c", "/tmp/log", "x.c:1: error")


def test_validated_request_is_normalized_and_read_only(tmp_path: Path, module_sources: list[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    kernel = tmp_path / "src" / "kernel.cu"
    kernel.write_text("")
    request = validated_request("ext", [*module_sources, "src/kernel.cu"], ["src"], ["-Isrc", " -O2 "], [],
                                ["-Lsrc"], False, None)
    assert request.sources == (*module_sources, str(kernel))
    assert request.include_paths == (str(tmp_path / "src"),)
    assert request.cflags == (f"-I{tmp_path / 'src'}", "-O2") and request.ldflags == (f"-L{tmp_path / 'src'}",)
    assert request.languages == frozenset({"c", "cuda"}) and request.with_cuda is True
    assert request.to_json()["sources"] == [*module_sources, str(kernel)]
    with pytest.raises(AttributeError, match="read-only"):
        request.name = "other"
    with pytest.raises(AttributeError, match="read-only"):
        del request.cflags
    assert request.name == "ext" and request.cflags


def test_many_sources_are_checked_for_duplicates(tmp_path: Path) -> None:
    sources = []
    for k in range(300):
        (tmp_path / f"f{k}.c").write_text("")
        sources.append(str(tmp_path / f"f{k}.c"))
    assert validated_request("ext", sources, (), [], [], [], False, None).sources == tuple(sources)
    with pytest.raises(ValueError, match="twice"):
        validated_request("ext", [*sources, sources[150]], (), [], [], [], False, None)


# The cache key of a fixed request and environment: CACHE_FORMAT stays 3 and existing caches stay valid
# only while these digests do not change. The last column: the SHA-256 of the same document with format 2,
# the keys of format 2 (computed with the code before the request object existed), so that the move to
# format 3 (a BLAKE2b digest) is known to have changed the digest and the format number only.
PINNED_KEYS = [
    (BuildRequest("pinned_ext", ("/src/a.c", "/src/b.cpp"), ("/src/include",), ("-O3", "-DX=1"), ("-O2",), ("-lm",),
                  False, False),
     {"torch": {"version": "2.5.0", "cuda": None}, "python": {"version": "3.12.1", "abi": "cp312"}, "cxx": "c++",
      "cc": "cc", "compiler_environment": {"CPATH": "/opt/include"}},
     "60b00e385cb2c51eda33c197a6f168bf840262029c75d2b12d111bc3403f02f5",
     "6f807508805b59be1bf794d3a214a99eb2e06dffaf39f4fd5c25e6bf9f52f41b"),
    (BuildRequest("pinned_cuda", ("/src/k.cu",), (), ("-march=native",), ("-O3", "--use_fast_math"), (), True,
                  True),
     {"torch": {"version": "2.5.0", "cuda": None}, "python": {"version": "3.12.1", "abi": "cp312"}, "cxx": "c++",
      "cc": "cc", "compiler_environment": {"CPATH": "/opt/include"},
      "nvcc": {"PYTORCH_NVCC": None, "CUDA_HOME": "/usr/local/cuda", "CUDA_PATH": None},
      "cuda_target": {"archs": ["8.0"]}, "cpu": "x86_64 avx2", "cuda_host_cc": "gcc"},
     "27d21aeee0c25e2ad019c53b146f17f1e1a8f55a1ee2a8fba4234c6002c4d41f",
     "205e17e3f9f3c70b51075a3805bff793bccb93cc4c1a2463b36a8e49d9fe68d7"),
]


@pytest.mark.parametrize(("request_", "environment", "key", "format_2_key"), PINNED_KEYS, ids=["cpu", "cuda"])
def test_the_cache_key_of_a_fixed_request_does_not_change(monkeypatch: pytest.MonkeyPatch, request_: BuildRequest,
                                                          environment: dict[str, object], key: str,
                                                          format_2_key: str) -> None:
    monkeypatch.setattr(_config, "__version__", "0.0.0-pinned")  # a release changes every key, by design
    assert _config.CACHE_FORMAT == 3
    config = BuildConfig(request_, environment)
    assert config.key == key
    document = {**config.describe(), "format": 2}
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert hashlib.sha256(encoded).hexdigest() == format_2_key
