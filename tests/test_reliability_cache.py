"""The cache under damage, hostile permissions, missing resources, foreign machines and odd paths.

Most tests call the library in this process: each call first forgets what this process loaded
(``_loader._memo``), so it looks at the disk as a fresh process would. Where another process's
view matters (machines posed by identity overrides, file systems without locks), the test runs
real subprocesses.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cpp_extension_tools as c
from cpp_extension_tools import _loader
from cpp_extension_tools._cache import fs as _fs
from cpp_extension_tools._cache.manifest import parse_manifest
from cpp_extension_tools._errors import CacheNotWritableError, ManifestError, UnsafeCacheError
from tests.conftest import BuildRuns, CompilerLog, last_json, run_python, write_module

NAME = "rel_ext"


def load(sources: list[str], root: Path | None = None, **kwargs: Any) -> ModuleType:
    """A lookup as a fresh process makes it: this process's memo of loaded modules is forgotten."""
    _loader._memo.clear()
    return c.cached_load_torch_cpp_extension(NAME, sources, build_directory=root, **kwargs)


def artifacts(root: Path) -> list[Path]:
    folder = root / NAME / "artifacts"
    return sorted(folder.iterdir()) if folder.exists() else []


@pytest.fixture
def built(tmp_path: Path, cache_root: Path, compilers: CompilerLog) -> tuple[list[str], Path]:
    """A module built once into the cache by another process; the compiler log is reset afterwards.

    Built elsewhere because the tests damage the binary in place: a binary this process had mapped
    would then fault (SIGBUS) here. (The library itself never writes over a published binary.)
    """
    sources = write_module(tmp_path / "src", functions={"answer": 42, "other": 7})
    run_python(f"import cpp_extension_tools as c; c.cached_load_torch_cpp_extension({NAME!r}, {sources!r})")
    compilers.reset()
    return sources, next(iter(artifacts(cache_root)))


# --------------------------------------------------------------------------- corrupted cache

def _damage(kind: str, artifact: Path, root: Path) -> None:
    library = artifact / f"{NAME}.so"
    manifest = artifact / "manifest.json"
    if kind == "truncated_so":
        library.write_bytes(library.read_bytes()[: library.stat().st_size // 3])
    elif kind == "flipped_bytes_so":
        data = bytearray(library.read_bytes())
        for offset in (64, len(data) // 2, len(data) - 9):
            data[offset] ^= 0x5A
        library.write_bytes(bytes(data))  # same size, so the manifest's size check alone cannot tell
    elif kind == "manifest_missing":
        manifest.unlink()
    elif kind == "manifest_invalid_json":
        manifest.write_text(manifest.read_text()[:-40])
    elif kind == "manifest_points_to_another_file":
        shutil.copy(library, artifact / "other.so")
        data = json.loads(manifest.read_text())
        data["library_file"] = "other.so"
        manifest.write_text(json.dumps(data))
    elif kind == "manifest_of_another_configuration":
        data = json.loads(manifest.read_text())
        data["key"] = "0" * 64
        manifest.write_text(json.dumps(data))
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated_so", "flipped_bytes_so", "manifest_missing", "manifest_invalid_json",
                                  "manifest_points_to_another_file", "manifest_of_another_configuration"])
def test_damaged_entry_is_rebuilt_with_a_warning(built: tuple[list[str], Path], cache_root: Path,
                                                 compilers: CompilerLog, caplog: pytest.LogCaptureFixture,
                                                 kind: str) -> None:
    sources, artifact = built
    _damage(kind, artifact, cache_root)
    builds = BuildRuns(cache_root / NAME)
    builds.mark()
    with caplog.at_level(logging.WARNING, logger="cpp_extension_tools"):
        module = load(sources)
    assert module.answer() == 42 and module.other() == 7
    assert any("damaged cache entry" in r.getMessage() and str(artifact) in r.getMessage() for r in caplog.records)
    # Repaired in place: the same content-addressed folder, intact again, nothing else beside it.
    assert artifacts(cache_root) == [artifact]
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["library_file"] == f"{NAME}.so" and manifest["artifact_id"] == artifact.name
    assert not (artifact / "other.so").exists()
    assert builds.ran(), "the repair went through a build"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cpp_extension_tools"):
        assert load(sources).answer() == 42
    assert not caplog.records, "a repaired entry must not warn again"


def test_leftovers_of_interrupted_writes_are_deleted(built: tuple[list[str], Path], cache_root: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    sources, artifact = built
    module_folder = cache_root / NAME
    staging = module_folder / "artifacts" / f"{artifact.name}.tmp-999999-0badc0de"
    staging.mkdir()
    (staging / f"{NAME}.so").write_bytes(b"\x7fELF half a binary")
    old_hint = module_folder / f"latest-{artifact.name[:16]}.tmp-999999-0badc0de"
    old_hint.write_text("x")
    os.utime(old_hint, (time.time() - 3600, time.time() - 3600))
    fresh_hint = module_folder / "latest-ffffffffffffffff.tmp-999998-0badc0de"
    fresh_hint.write_text("x")  # could be a live process updating a hint: too young to delete
    assert load(sources).answer() == 42  # harmless for a cache hit: nothing is deleted on the warm path
    assert staging.exists()
    write_module(Path(sources[0]).parent, functions={"answer": 43, "other": 7})
    with caplog.at_level(logging.WARNING, logger="cpp_extension_tools"):
        assert load(sources).answer() == 43  # a build: leftovers are deleted under the lock
    assert not staging.exists() and not old_hint.exists() and fresh_hint.exists()
    assert sum("leftover of an interrupted write" in r.getMessage() for r in caplog.records) == 2


def test_lock_file_of_a_dead_process_does_not_block(tmp_path: Path, cache_root: Path, compilers: CompilerLog,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sources = write_module(tmp_path / "src")
    folder = cache_root / NAME
    folder.mkdir(parents=True, mode=0o700)
    (folder / ".lock").write_text("")
    (folder / ".lock.owner").write_text(json.dumps({"pid": 999999, "host": "gone", "since": 0}))
    monkeypatch.setenv("CACHED_CPP_EXTENSION_LOCK_TIMEOUT", "20")
    started = time.monotonic()
    assert load(sources).answer() == 42
    assert time.monotonic() - started < 20
    assert (folder / ".lock").exists(), "lock files are never deleted (a waiter may hold them open)"


def test_emptied_build_folder_and_torch_baton(built: tuple[list[str], Path], cache_root: Path,
                                              compilers: CompilerLog) -> None:
    sources, _ = built
    build_folder = next((cache_root / NAME / "builds").iterdir())
    shutil.rmtree(build_folder)
    build_folder.mkdir(mode=0o700)
    assert load(sources).answer() == 42  # harmless for a cache hit: no build
    assert compilers.calls() == [] and not BuildRuns(cache_root / NAME).ran()
    (build_folder / "lock").write_text("")  # torch's FileBaton left by a killed torch build
    write_module(Path(sources[0]).parent, functions={"answer": 44, "other": 7})
    assert load(sources).answer() == 44
    assert len(compilers.compiles()) == len(sources) and not (build_folder / "lock").exists()


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                     max_leaves=12)


def _valid_manifest() -> dict[str, Any]:
    record = {"path": "/x/a.c", "size": 3, "mtime_ns": 1, "sha256": "a" * 64, "ctime_ns": 2, "inode": 7, "dev": 9}
    return {"format": 2, "name": "m", "key": "k" * 64, "artifact_id": "kkkk-cccc", "library_file": "m.so",
            "library": {**record, "path": "m.so"}, "sources": ["/x/a.c"], "inputs": [record],
            "folders": [{"path": "/x", "mtime_ns": 5}],
            "tools": [{"role": "cc", "path": "/usr/bin/cc", "size": 1, "mtime_ns": 2, "inode": 3}],
            "created_at": 1.5, "build_seconds": 0.25, "details": {}}


def _parses_or_manifest_error(data: bytes) -> None:
    try:
        parse_manifest(data)
    except ManifestError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_manifest_reader_fuzz_bytes(data: bytes) -> None:
    _parses_or_manifest_error(data)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_manifest_reader_fuzz_json_documents(document: Any) -> None:
    _parses_or_manifest_error(json.dumps(document).encode())


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(_valid_manifest())), _JSON, st.booleans())
def test_manifest_reader_fuzz_one_field(field: str, value: Any, drop: bool) -> None:
    """A valid manifest with one field removed or replaced by any JSON value."""
    document = _valid_manifest()
    if drop:
        del document[field]
    else:
        document[field] = value
    _parses_or_manifest_error(json.dumps(document).encode())
    assert parse_manifest(json.dumps(_valid_manifest()).encode()).name == "m"


# --------------------------------------------------------------------------- resources

def test_read_only_cache_root_names_the_path_and_the_fix(tmp_path: Path, compilers: CompilerLog,
                                                         tmpfs: Any) -> None:
    root = tmpfs("ro,size=1m")
    with pytest.raises(CacheNotWritableError, match="CACHED_CPP_EXTENSION_BUILD_DIR") as info:
        load(write_module(tmp_path / "src"), root)
    assert str(root) in str(info.value) and compilers.calls() == []
    assert list(root.iterdir()) == []


def test_read_only_cache_with_the_binary_loads_it(tmp_path: Path, compilers: CompilerLog, tmpfs: Any) -> None:
    """A cache filled ahead of time (a container image) and mounted read-only is used as is."""
    root = tmpfs("size=64m")
    sources = write_module(tmp_path / "src")
    assert load(sources, root).answer() == 42
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    compilers.reset()
    result = run_python(f"""
        import cpp_extension_tools as c, json
        m = c.cached_load_torch_cpp_extension({NAME!r}, {sources!r}, build_directory={str(root)!r})
        print(json.dumps(m.answer()))""")
    assert last_json(result.stdout) == 42 and compilers.calls() == []


def test_cache_root_that_cannot_be_created(tmp_path: Path, compilers: CompilerLog) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    root = blocker / "cache"
    with pytest.raises(CacheNotWritableError, match="CACHED_CPP_EXTENSION_BUILD_DIR") as info:
        load(write_module(tmp_path / "src"), root)
    assert str(blocker) in str(info.value)


def test_full_disk_during_the_build(tmp_path: Path, compilers: CompilerLog, tmpfs: Any) -> None:
    root = tmpfs("size=200k")
    (root / "filler").write_bytes(b"\0" * (180 << 10))
    with pytest.raises((c.BuildError, CacheNotWritableError)) as info:
        load(write_module(tmp_path / "src", functions={f"f{i}": i for i in range(12)}), root)
    assert "No space left on device" in str(info.value) or "full" in str(info.value)
    assert "CACHED_CPP_EXTENSION_BUILD_DIR" in str(info.value)
    assert artifacts(root) == [], "nothing half-published"


def test_full_disk_during_publication(built: tuple[list[str], Path], cache_root: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    sources, artifact = built
    write_module(Path(sources[0]).parent, functions={"answer": 45, "other": 7})

    def no_space(source: str, destination: str, mode: int = 0o755) -> None:
        with open(destination + ".tmp-0-full", "wb") as f:  # a partial copy, as a real ENOSPC leaves it
            f.write(b"\x7fELF")
        raise OSError(28, "No space left on device", destination)

    # A context of its own: monkeypatch.undo() would also undo the cache_root fixture's environment,
    # and the next load would then write into the default root (the current folder).
    with monkeypatch.context() as patch, pytest.raises(CacheNotWritableError, match="free some space") as info:
        patch.setattr(_fs, "atomic_copy", no_space)  # the store imports it from _cache.fs where it copies
        load(sources)
    assert "CACHED_CPP_EXTENSION_BUILD_DIR" in str(info.value)
    assert artifacts(cache_root) == [artifact], "the staging folder is gone, the old entry untouched"
    assert load(sources).answer() == 45
    assert len(artifacts(cache_root)) == 2


_NO_FLOCK = """
import errno, fcntl, json, os, sys, logging
real_flock = fcntl.flock
root = os.environ["CACHED_CPP_EXTENSION_BUILD_DIR"]
def flock(fd, operation):  # an NFS mount without a lock daemon
    if os.readlink(f"/proc/self/fd/{{fd}}").startswith(root):
        raise OSError(errno.ENOLCK, "No locks available")
    return real_flock(fd, operation)
fcntl.flock = flock
logging.basicConfig(level=logging.WARNING)
import cpp_extension_tools as c
m = c.cached_load_torch_cpp_extension({name!r}, {sources!r})
print(json.dumps(m.answer()))
"""


@pytest.mark.slow
def test_file_system_without_locks_falls_back_to_a_host_lock(tmp_path: Path, cache_root: Path,
                                                             compilers: CompilerLog) -> None:
    sources = write_module(tmp_path / "src")
    script = tmp_path / "noflock.py"
    script.write_text(_NO_FLOCK.format(name=NAME, sources=sources))
    env = {**os.environ, "COMPILE_DELAY": "1"}
    processes = [subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [last_json(out) for out, _ in outputs] == [42, 42, 42]
    assert any("does not support file locks" in err and "on this host" in err for _, err in outputs)
    assert len(compilers.compiles()) == len(sources), "the host-local lock still gives one build"


# --------------------------------------------------------------------------- machines sharing a cache

_IDENTITY_LOAD = """
import json, cpp_extension_tools as c
m = c.cached_load_torch_cpp_extension({name!r}, {sources!r}, extra_cflags=["-O2", "-march=native"])
print(json.dumps(m.answer()))
"""


@pytest.mark.slow
@pytest.mark.parametrize("variable", ["CACHED_CPP_EXTENSION_CPU_FINGERPRINT", "CACHED_CPP_EXTENSION_TORCH_IDENTITY",
                                      "CACHED_CPP_EXTENSION_PYTHON_IDENTITY"])
def test_machines_sharing_a_cache_keep_their_own_binaries(tmp_path: Path, cache_root: Path,
                                                          compilers: CompilerLog, variable: str) -> None:
    """Two process trees that differ only in what they pose as never load each other's binary."""
    sources = write_module(tmp_path / "src")
    code = _IDENTITY_LOAD.format(name=NAME, sources=sources)
    compiles = []
    for machine in ("machine-a", "machine-b", "machine-a", "machine-b"):
        assert last_json(run_python(code, env={variable: machine}).stdout) == 42
        compiles.append(len(compilers.compiles()))
    n = len(sources)
    assert compiles == [n, 2 * n, 2 * n, 2 * n]
    built_for = {json.loads((a / "manifest.json").read_text())["key"] for a in artifacts(cache_root)}
    assert len(built_for) == 2


# --------------------------------------------------------------------------- permissions and paths

def _chown(path: Path, uid: int = -1, gid: int = -1) -> None:
    try:
        os.chown(path, uid, gid)
    except PermissionError:
        pytest.skip("changing ownership needs root")


@pytest.mark.parametrize("case", ["group_writable_folder", "world_writable_folder", "foreign_owner_binary",
                                  "symlinked_artifact"])
def test_binaries_others_could_replace_are_refused(built: tuple[list[str], Path], cache_root: Path,
                                                   compilers: CompilerLog, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path, case: str) -> None:
    sources, artifact = built
    module_folder = cache_root / NAME
    builds = BuildRuns(module_folder)
    builds.mark()
    shared_accepts = True
    if case == "group_writable_folder":
        _chown(module_folder, gid=54321)  # a group other users are in, not this user's private one
        module_folder.chmod(0o770)
        problem = "writable by the members of group 54321"
    elif case == "world_writable_folder":
        (module_folder / "artifacts").chmod(0o777)
        problem, shared_accepts = "writable by every user", False
    elif case == "foreign_owner_binary":
        _chown(artifact / f"{NAME}.so", uid=54321)
        problem = "owned by uid 54321"
    else:
        elsewhere = tmp_path / "elsewhere"
        shutil.move(artifact, elsewhere)
        artifact.symlink_to(elsewhere)
        problem, shared_accepts = "symbolic link", False
    with pytest.raises(UnsafeCacheError, match=problem) as info:
        load(sources)
    message = str(info.value)
    assert "CACHED_CPP_EXTENSION_SHARED_CACHE" in message and "another user" in message
    assert not builds.ran(), "refused, not rebuilt into the same unsafe place"
    monkeypatch.setenv("CACHED_CPP_EXTENSION_SHARED_CACHE", "1")
    if shared_accepts:
        assert load(sources).answer() == 42
    else:
        with pytest.raises(UnsafeCacheError):
            load(sources)


def test_sticky_world_writable_root_is_accepted(tmp_path: Path, compilers: CompilerLog) -> None:
    root = tmp_path / "like_tmp"
    root.mkdir()
    root.chmod(0o1777)
    assert load(write_module(tmp_path / "src"), root).answer() == 42


@pytest.mark.parametrize("shared", [False, True])
def test_new_cache_folders_are_private(tmp_path: Path, compilers: CompilerLog, monkeypatch: pytest.MonkeyPatch,
                                       shared: bool) -> None:
    if shared:
        monkeypatch.setenv("CACHED_CPP_EXTENSION_SHARED_CACHE", "1")
    root = tmp_path / "new" / "root"
    load(write_module(tmp_path / "src"), root)
    expected = 0o2770 if shared else 0o700
    folders = [root, root / NAME, root / NAME / "artifacts", *artifacts(root),
               *(root / NAME / "builds").iterdir()]
    assert {oct(stat.S_IMODE(f.stat().st_mode)) for f in folders} == {oct(expected)}


def test_symlinked_module_folder_is_not_written_through(tmp_path: Path, cache_root: Path,
                                                        compilers: CompilerLog) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    cache_root.mkdir()
    (cache_root / NAME).symlink_to(outside)
    with pytest.raises(UnsafeCacheError, match="symbolic link"):
        load(write_module(tmp_path / "src"))
    assert list(outside.iterdir()) == [] and compilers.calls() == []


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/b", "..", "x.y"])
def test_module_names_cannot_leave_the_cache_root(tmp_path: Path, cache_root: Path, name: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        c.cached_load_torch_cpp_extension(name, write_module(tmp_path / "src"))
    assert not cache_root.exists() and not (tmp_path / "escape").exists()


def test_odd_paths_build_and_load(tmp_path: Path, compilers: CompilerLog) -> None:
    odd = tmp_path / "with space" / "ünïcødé ✓"
    long_part = "a_long_folder_name_" * 6
    sources = write_module(odd / long_part / "src", functions={"answer": 42, "other": 7})
    root = odd / long_part / "cache root"
    assert len(str(root)) > 200 and len(sources[0]) > 200
    assert load(sources, root).answer() == 42
    compilers.reset()
    assert load(sources, root).other() == 7 and compilers.calls() == []


def test_sources_with_the_same_file_name_in_different_folders(tmp_path: Path, compilers: CompilerLog,
                                                              cache_root: Path) -> None:
    sources = write_module(tmp_path / "src")
    for folder, value in (("a", 1), ("b", 2), ("c", 3)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "util.c").write_text(f"int util_{folder}(void) {{ return {value}; }}\n")
    (tmp_path / "c" / "util.cpp").write_text('extern "C" int util_cpp(void) { return 4; }\n')
    (tmp_path / "src" / "answer.c").write_text(
        "#include <Python.h>\nint util_a(void); int util_b(void); int util_c(void); int util_cpp(void);\n"
        "PyObject *answer(PyObject *self, PyObject *unused) { (void)self; (void)unused;\n"
        "  return PyLong_FromLong(util_a() * 1000 + util_b() * 100 + util_c() * 10 + util_cpp()); }\n")
    # Given with ".." components: still read in place, and nothing is written beside them.
    utils = [str(tmp_path / "src" / ".." / f / n)
             for f, n in (("a", "util.c"), ("b", "util.c"), ("c", "util.c"), ("c", "util.cpp"))]
    def outside_the_cache() -> set[Path]:
        return {p for p in tmp_path.rglob("*") if p != cache_root and cache_root not in p.parents
                and "compilers" not in p.parts}

    before = outside_the_cache()
    assert load(sources + utils).answer() == 1234
    assert len(compilers.compiles()) == len(sources) + 4
    assert outside_the_cache() == before, "the build wrote outside the cache root"
    # Editing one of them recompiles that one only, and the binary sees the edit.
    compilers.reset()
    (tmp_path / "b" / "util.c").write_text("int util_b(void) { return 5; }\n")
    assert load(sources + utils).answer() == 1534
    assert [Path(line.split(" -c ")[1].split()[0]).name for line in compilers.compiles()] == ["util-2.c"]
