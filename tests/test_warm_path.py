"""The warm path's own budget: what one cache hit may open, stat and import (bench/warm_path.py times it).

A warm load is about the cost of its dlopen plus a stat per recorded input; these tests pin the parts
that once cost more: the binary's trusted open (one open per level and an fstat each, now one lookup
per level), the manifest's field-by-field checks (now one expression per record), and what a warm call
imports.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpp_extension_tools._cache import manifest as _manifest
from cpp_extension_tools._cache import trust as _trust
from cpp_extension_tools._errors import UnsafeCacheError
from tests.conftest import CompilerLog, last_json, run_python, write_module

NAME = "warm_ext"


def _tree(root: Path, levels: int = 3) -> Path:
    """root/<a>/<b>/.../warm_ext.so, every folder private."""
    folder = root
    for index in range(levels):
        folder = folder / f"level{index}"
    folder.mkdir(parents=True)
    library = folder / f"{NAME}.so"
    library.write_bytes(b"\x7fELF")
    for level in (root, *root.rglob("level*")):
        level.chmod(0o700)
    return library


class _Calls:
    """Counts the os functions _trust calls (os is shared: every caller in this process counts)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...]) -> None:
        self.counts = dict.fromkeys(names, 0)
        for name in names:
            real = getattr(os, name)
            monkeypatch.setattr(os, name, self._counting(name, real))

    def _counting(self, name: str, real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.counts[name] += 1
            return real(*args, **kwargs)
        return call


@pytest.mark.parametrize("levels", [1, 3, 6])
def test_open_trusted_opens_the_root_and_the_binary_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         levels: int) -> None:
    root = tmp_path / "cache"
    library = _tree(root, levels)
    calls = _Calls(monkeypatch, ("open", "close", "stat", "lstat", "fstat"))
    fd, info = _trust.open_trusted_stat(str(root), str(library))
    counts = dict(calls.counts)
    monkeypatch.undo()
    try:
        assert os.path.sameopenfile(fd, os.open(library, os.O_RDONLY))
        assert (info.st_ino, info.st_dev, info.st_size) == (os.fstat(fd).st_ino, os.fstat(fd).st_dev, 4)
    finally:
        os.close(fd)
    # One lookup per folder below the root, whatever the depth; two descriptors, one of them closed.
    assert counts == {"open": 2, "close": 1, "stat": levels, "lstat": 0, "fstat": 2}


@pytest.mark.parametrize("case", ["file_as_level", "missing_level", "symlinked_level", "world_writable_level"])
def test_open_trusted_names_the_offending_level(tmp_path: Path, case: str) -> None:
    root = tmp_path / "cache"
    library = _tree(root)
    level = root / "level0" / "level1"
    expected: type[BaseException] = UnsafeCacheError
    if case == "file_as_level":
        shutil.rmtree(level)
        level.write_text("")
        expected = NotADirectoryError
    elif case == "missing_level":
        shutil.rmtree(level)
        expected = FileNotFoundError
    elif case == "symlinked_level":
        level.rename(tmp_path / "elsewhere")
        level.symlink_to(tmp_path / "elsewhere")
    else:
        level.chmod(0o777)
    with pytest.raises(expected) as info:
        os.close(_trust.open_trusted(str(root), str(library)))
    if expected is UnsafeCacheError:
        assert str(level) in str(info.value) and "another user" in str(info.value)
    else:
        assert getattr(info.value, "filename", None) == str(level)


# --------------------------------------------------------------------------- manifest records

_VALUE = st.none() | st.booleans() | st.integers(min_value=-3, max_value=2**70) | st.floats() | st.text(max_size=3)
_SHA = st.sampled_from(["a" * 64, "A" * 64, "a" * 63, "g" * 64, "0123456789abcdef" * 4, " " + "a" * 63])
_RECORD_FIELDS = ("path", "size", "mtime_ns", "sha256", "ctime_ns", "inode", "dev")


@st.composite
def _records(draw: st.DrawFn) -> Any:
    """Mostly well-formed file records, each field possibly replaced, removed or of another type."""
    record: dict[str, Any] = {"path": "/x/a.c", "size": 3, "mtime_ns": 1, "sha256": "b" * 64, "ctime_ns": 2,
                              "inode": 7, "dev": 9}
    for field in _RECORD_FIELDS:
        choice = draw(st.sampled_from(["keep", "keep", "replace", "drop"]))
        if choice == "replace":
            record[field] = draw(_SHA if field == "sha256" else _VALUE)
        elif choice == "drop":
            del record[field]
    return draw(st.sampled_from([record, record, [record], None, "record"]))


def _outcome(read: Any, obj: Any) -> Any:
    try:
        return read(obj).to_json()
    except (KeyError, TypeError, ValueError) as error:
        return type(error)


@settings(max_examples=400, deadline=None)
@given(_records())
def test_fast_record_reader_agrees_with_the_field_checks(obj: Any) -> None:
    assert _outcome(_manifest._record, obj) == _outcome(_manifest._checked_record, obj)


def _natural(value: Any) -> bool:
    return type(value) is int and value >= 0


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["role", "path", "size", "mtime_ns", "inode"]), _VALUE))
def test_tool_reader_accepts_exactly_the_well_formed_records(tool: dict[str, Any]) -> None:
    well_formed = (all(type(tool.get(k)) is str for k in ("role", "path"))
                   and all(_natural(tool.get(k)) for k in ("size", "mtime_ns", "inode")))
    outcome = _outcome(_manifest._tool, tool)
    assert outcome == tool if well_formed else outcome in (KeyError, ValueError)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["path", "mtime_ns"]), _VALUE))
def test_folder_reader_accepts_exactly_the_well_formed_records(folder: dict[str, Any]) -> None:
    well_formed = type(folder.get("path")) is str and _natural(folder.get("mtime_ns"))
    outcome = _outcome(_manifest._folder, folder)
    assert outcome == folder if well_formed else outcome in (KeyError, ValueError)


def test_manifest_round_trip_keeps_every_record() -> None:
    record = {"path": "/x/a.c", "size": 3, "mtime_ns": 1, "sha256": "c" * 64, "ctime_ns": 2, "inode": 7, "dev": 9}
    document = {"format": 2, "name": "m", "key": "k" * 64, "artifact_id": "kkkk-cccc", "library_file": "m.so",
                "library": {**record, "path": "m.so"}, "sources": ["/x/a.c", "/x/b.c"],
                "inputs": [record, {**record, "path": "/x/b.c", "inode": 8}],
                "folders": [{"path": "/x", "mtime_ns": 5}, {"path": "/y", "mtime_ns": 0}],
                "tools": [{"role": "cc", "path": "/usr/bin/cc", "size": 1, "mtime_ns": 2, "inode": 3}],
                "created_at": 1.5, "build_seconds": 0.25, "details": {"a": [1]}}
    parsed = _manifest.parse_manifest(json.dumps(document).encode())
    assert parsed.to_json() == document
    assert parsed.sources == ("/x/a.c", "/x/b.c") and isinstance(parsed.inputs, tuple)


# --------------------------------------------------------------------------- a warm call in a fresh process

_WARM_CALL = """
    import json, os, sys
    import torch
    before = set(sys.modules)
    import cpp_extension_tools as c
    imported = set(sys.modules)
    sources = json.loads(sys.argv[1])
    stats = []
    real_stat = os.stat
    def counting_stat(path, *args, **kwargs):
        stats.append(os.fspath(path) if isinstance(path, (str, os.PathLike)) else path)
        return real_stat(path, *args, **kwargs)
    os.stat = counting_stat
    module = c.cached_load_torch_cpp_extension("warm_ext", sources)
    os.stat = real_stat
    print(json.dumps({"answer": module.answer(), "by_import": sorted(imported - before),
                      "by_call": sorted(set(sys.modules) - imported - {"warm_ext"}),  # but the extension
                      "source_stats": sum(stats.count(s) for s in sources)}))
"""


def _warm_call(sources: list[str]) -> dict[str, Any]:
    run_python(f"import cpp_extension_tools as c; c.cached_load_torch_cpp_extension('warm_ext', {sources!r})")
    result = last_json(run_python(_WARM_CALL.replace("sys.argv[1]", repr(json.dumps(sources)))).stdout)
    assert isinstance(result, dict) and result["answer"] == 42
    return result


def test_warm_call_imports_nothing_and_stats_each_source_a_bounded_number_of_times(
        tmp_path: Path, cache_root: Path, compilers: CompilerLog) -> None:
    small = _warm_call(write_module(tmp_path / "one"))
    large = _warm_call(write_module(tmp_path / "many", functions={f"f{k}": k for k in range(8)} | {"answer": 42}))
    assert large["by_call"] == [] and small["by_call"] == [], "a warm call imports nothing"
    heavy = {"setuptools", "filelock", "torch.utils.cpp_extension", "subprocess", "cpp_extension_tools._build.run",
             "cpp_extension_tools._cache.lock", "cpp_extension_tools._cache.prebuilt", "cpp_extension_tools._cache.fs",
             "cpp_extension_tools._env.cuda"}
    assert heavy.isdisjoint(large["by_import"]), "import cpp_extension_tools loads only what the warm call needs"
    # Every module costs about as much as its code: the warm import is these (docs/architecture.md), no more.
    assert large["by_import"] == sorted(WARM_IMPORT)
    # Validation stats each source once; the lookup compares the manifest's records of the sources with those
    # stats (no second stat, no read, no hash: test_processes checks the last two).
    n_small, n_large = 2, 10  # answer.c + module.c; f0..f7.c, answer.c and module.c
    assert (small["source_stats"], large["source_stats"]) == (n_small, n_large)


# The modules `import cpp_extension_tools` loads after `import torch` (issue 16: every one must earn its place).
WARM_IMPORT = {"cpp_extension_tools", *(f"cpp_extension_tools.{name}" for name in (
    "_api", "_arguments", "_errors", "_forksafe", "_key", "_loader", "_settings", "_version",
    "_env", "_env.cpu", "_env.identity",
    "_cache", "_cache.hashing", "_cache.manifest", "_cache.root", "_cache.store", "_cache.trust"))}
