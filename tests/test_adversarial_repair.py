"""Adversarial repair (issue 14): no cache state that only a hand can clear, the stat fast path, no blocking.

Each test damages one module's cache the way an attacker or an unlucky user would (garbage with its old
mtime restored, a plain file or a FIFO where a folder or file belongs, a full disk, a hint of another
configuration) and checks that the next call, in a fresh process, repairs it by itself: it loads the
right value, compiles what it must (counted by the logging compilers), says what it repaired, and never
hangs or crashes. A binary damaged in place is never mapped by this process (it would fault with
SIGBUS): every load runs in a subprocess, whose return code is checked.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CompilerLog, last_json, write_module

NAME = "rep_ext"

# Warnings are log records; each process configures logging so that they reach its stderr with their level.
_CALL = """
import json, logging, sys
spec = json.loads(sys.argv[1])
logging.basicConfig(level=spec.get("log_level", "WARNING"), format="%(levelname)s %(message)s")
import cpp_extension_tools as c
try:
    m = c.cached_load_torch_cpp_extension(spec["name"], spec["sources"], build_directory=spec["root"],
                                          **spec["kwargs"])
    out = {"values": {f: getattr(m, f)() for f in spec["functions"]}}
except Exception as e:
    out = {"error": type(e).__name__, "message": str(e)}
print(json.dumps(out))
"""


@dataclass
class Outcome:
    returncode: int
    result: dict[str, Any]
    stderr: str

    @property
    def values(self) -> dict[str, int]:
        assert self.returncode == 0, f"the process crashed ({self.returncode}):\n{self.stderr}"
        assert "values" in self.result, f"the call failed: {self.result}\n{self.stderr}"
        return dict(self.result["values"])

    @property
    def value(self) -> int:
        return self.values["answer"]

    @property
    def error(self) -> tuple[str, str]:
        assert self.returncode == 0, f"the process crashed ({self.returncode}):\n{self.stderr}"
        assert "error" in self.result, f"the call did not fail: {self.result}"
        return self.result["error"], self.result["message"]


def call(sources: list[str], root: Path, functions: tuple[str, ...] = ("answer",), name: str = NAME,
         env: dict[str, str] | None = None, timeout: float = 120, **kwargs: Any) -> Outcome:
    """One call in a fresh interpreter: its return code, its result (values or error) and its stderr."""
    spec = {"name": name, "sources": sources, "root": str(root), "functions": list(functions), "kwargs": kwargs}
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        process = subprocess.run([sys.executable, "-c", _CALL, json.dumps(spec)], env=full_env,
                                 capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the call did not finish within {timeout} s (it hangs)")
    try:
        result = last_json(process.stdout)
    except AssertionError:
        result = {}
    assert isinstance(result, dict)
    return Outcome(process.returncode, result, process.stderr)


def module_folder(root: Path, name: str = NAME) -> Path:
    return root / name


def artifacts(root: Path, name: str = NAME) -> list[Path]:
    folder = root / name / "artifacts"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def build_folder(root: Path, name: str = NAME) -> Path:
    folders = sorted((root / name / "builds").iterdir())
    assert len(folders) == 1, folders
    return folders[0]


def garbage_like(path: Path, data: bytes | None = None) -> None:
    """Overwrite ``path`` in place with garbage of its size, and restore its atime and mtime."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(data if data is not None else (b"\xde\xad\xbe\xef" * (st.st_size // 4 + 1))[:st.st_size])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def replace_keeping_stamps(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file, give it ``path``'s atime and mtime, rename it over ``path``."""
    st = path.stat()
    other = path.with_name(path.name + ".new")
    other.write_bytes(data)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)


def set_value(source: str | Path, old: int, new: int) -> None:
    """Edit a write_module function file to return ``new`` (same size when the digits are as many)."""
    path = Path(source)
    text = path.read_text()
    assert f"PyLong_FromLong({old})" in text
    path.write_text(text.replace(f"PyLong_FromLong({old})", f"PyLong_FromLong({new})"))


def source(sources: list[str], file_name: str) -> str:
    return next(s for s in sources if os.path.basename(s) == file_name)


@pytest.fixture
def built(tmp_path: Path, compilers: CompilerLog) -> tuple[list[str], Path]:
    """A module (answer 42, other 7) built into its own cache root by another process; compiler log reset."""
    root = tmp_path / "cache"
    sources = write_module(tmp_path / "src", functions={"answer": 42, "other": 7})
    assert call(sources, root).value == 42
    compilers.reset()
    return sources, root


def repaired(outcome: Outcome, *texts: str) -> None:
    """The call warned (stderr) with each of ``texts``, and never asked for a clear."""
    for text in texts:
        assert text in outcome.stderr, f"no warning {text!r} in:\n{outcome.stderr}"
    assert "cpp-extension-tools clear" not in outcome.stderr + json.dumps(outcome.result)


# --------------------------------------------------------------------------- §2 the build folder

def test_garbled_build_ninja_then_a_source_edit(built: tuple[list[str], Path], compilers: CompilerLog) -> None:
    sources, root = built
    ninja_file = build_folder(root) / "build.ninja"
    garbage_like(ninja_file, b"build garbage: ??? $\n  \x00\x01 = \n" * 3)
    set_value(source(sources, "answer.c"), 42, 43)
    outcome = call(sources, root, ("answer", "other"))
    assert outcome.values == {"answer": 43, "other": 7}
    repaired(outcome, "changed or damaged since it was written; writing it again")
    assert "build garbage" not in ninja_file.read_text(), "build.ninja was written anew"
    # Written anew from its recorded inputs: only the edited source is compiled again, nothing twice.
    assert compilers.compiled_sources() == ["answer.c"]
    compilers.reset()
    assert call(sources, root).value == 43 and compilers.calls() == []


def test_emptied_build_ninja_then_a_source_edit_never_publishes_the_old_binary(
        built: tuple[list[str], Path], compilers: CompilerLog) -> None:
    """An empty build.ninja is valid to ninja ("no work to do"): the old linked binary must not pass as new."""
    sources, root = built
    ninja_file = build_folder(root) / "build.ninja"
    st = ninja_file.stat()
    ninja_file.write_bytes(b"")
    os.utime(ninja_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    set_value(source(sources, "answer.c"), 42, 43)
    assert call(sources, root).value == 43
    assert call(sources, root).value == 43


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["cut_short", "garbage"])
def test_damaged_depfile_keeps_every_header_recorded(tmp_path: Path, compilers: CompilerLog, damage: str) -> None:
    """An object's depfile (<object>.d) cut short (a full disk) or garbled, then another source edited.

    The header that only the untouched object reads must stay an input of the published artifact: a
    later edit of it must be seen, never answered with the old binary.
    """
    root = tmp_path / "cache"
    sources = write_module(tmp_path / "src", functions={"answer": 42, "other": 7})
    header = tmp_path / "src" / "only_answer.h"
    header.write_text("#define ONLY_ANSWER 42\n")
    answer = Path(source(sources, "answer.c"))
    text = answer.read_text().replace("FromLong(42)", "FromLong(ONLY_ANSWER)")
    answer.write_text('#include "only_answer.h"\n' + text)
    assert call(sources, root).value == 42
    depfile = build_folder(root) / "answer.o.d"
    assert str(header) in depfile.read_text()
    if damage == "cut_short":
        depfile.write_text(depfile.read_text()[:depfile.read_text().index(str(answer)) + len(str(answer))] + "\n")
    else:
        garbage_like(depfile)
    set_value(source(sources, "other.c"), 7, 8)
    assert call(sources, root, ("answer", "other")).values == {"answer": 42, "other": 8}
    header.write_text("#define ONLY_ANSWER 43\n")
    assert call(sources, root).value == 43, "the header is still an input of the published artifact"


def test_garbled_object_with_its_old_mtime_then_a_relink(built: tuple[list[str], Path],
                                                         compilers: CompilerLog) -> None:
    sources, root = built
    garbage_like(build_folder(root) / "answer.o")
    set_value(source(sources, "other.c"), 7, 8)
    outcome = call(sources, root, ("answer", "other"))
    assert outcome.values == {"answer": 42, "other": 8}
    # The garbage object is recompiled (its ctime changed), the edited source too; module.o is kept.
    assert compilers.compiled_sources() == ["answer.c", "other.c"]


def test_garbled_object_and_no_build_state_then_a_relink(built: tuple[list[str], Path],
                                                         compilers: CompilerLog) -> None:
    """Without the state file nothing vouches for the objects: the failed link wipes the folder, once."""
    sources, root = built
    folder = build_folder(root)
    garbage_like(folder / "answer.o")
    (folder / "cpp_extension_tools_state.json").unlink()
    set_value(source(sources, "other.c"), 7, 8)
    outcome = call(sources, root, ("answer", "other"))
    assert outcome.values == {"answer": 42, "other": 8}
    assert compilers.compiled_sources().count("answer.c") == 1


@pytest.mark.parametrize("damage", ["truncated", "garbage", "no_state_truncated"])
def test_damaged_linked_binary_in_the_build_folder_is_never_published(
        built: tuple[list[str], Path], compilers: CompilerLog, damage: str) -> None:
    sources, root = built
    folder = build_folder(root)
    library = folder / f"{NAME}.so"
    st = library.stat()
    if damage == "garbage":
        garbage_like(library)
    else:
        with open(library, "r+b") as f:
            f.truncate(st.st_size // 3)
        os.utime(library, ns=(st.st_atime_ns, st.st_mtime_ns))
    if damage == "no_state_truncated":
        (folder / "cpp_extension_tools_state.json").unlink()
    for artifact in artifacts(root):
        shutil.rmtree(artifact)
    outcome = call(sources, root, ("answer", "other"))
    assert outcome.values == {"answer": 42, "other": 7}  # exit status 0: no SIGBUS
    if damage == "no_state_truncated":
        repaired(outcome, "deleting the build folder")  # ninja had "no work to do"; the ELF check found it
    (artifact,) = artifacts(root)
    assert (artifact / f"{NAME}.so").stat().st_size == st.st_size
    assert call(sources, root).value == 42


@pytest.mark.parametrize("which", [
    "build_folder",
    "builds",
    "artifacts", "module_folder"])
def test_a_plain_file_where_a_cache_folder_belongs(built: tuple[list[str], Path], compilers: CompilerLog,
                                                   which: str) -> None:
    sources, root = built
    module = module_folder(root)
    path = {"build_folder": build_folder(root), "builds": module / "builds", "artifacts": module / "artifacts",
            "module_folder": module}[which]
    shutil.rmtree(path)
    path.write_text("not a folder\n")
    set_value(source(sources, "answer.c"), 42, 43)  # an intact artifact would still hit: make the call build
    outcome = call(sources, root, ("answer", "other"))
    assert outcome.values == {"answer": 43, "other": 7}
    repaired(outcome, f"deleting {path}")
    assert path.is_dir()
    assert call(sources, root).value == 43


@pytest.mark.slow
@pytest.mark.parametrize("which", [
    "latest",
    "failure"])
def test_a_folder_where_a_hint_or_failure_record_belongs(built: tuple[list[str], Path], compilers: CompilerLog,
                                                         which: str) -> None:
    sources, root = built
    (artifact,) = artifacts(root)
    key16 = artifact.name[:16]
    path = module_folder(root) / (f"latest-{key16}" if which == "latest" else f"failure-{key16}.json")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    (path / "inside").mkdir(parents=True)
    assert call(sources, root).value == 42
    set_value(source(sources, "answer.c"), 42, 43)
    assert call(sources, root).value == 43
    assert call(sources, root).value == 43


# --------------------------------------------------------------------------- §2 a full disk, then freed

def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` up to ``leave`` free bytes with one file."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    size = st.f_bavail * st.f_frsize - leave
    with open(filler, "wb") as f:
        with contextlib.suppress(OSError):
            f.write(b"\0" * max(0, size))
    return filler


def test_disk_full_during_the_build_then_freed(tmp_path: Path, compilers: CompilerLog, tmpfs: Any) -> None:
    disk = tmpfs("size=4m")
    sources = write_module(tmp_path / "src", functions={f"f{i}": i for i in range(8)} | {"answer": 42})
    filler = _fill(disk, 8 << 10)
    failed = call(sources, disk)
    kind, message = failed.error
    assert kind in ("BuildError", "CacheNotWritableError"), failed.result
    assert "No space left on device" in message or "full" in message, message
    assert "CACHED_CPP_EXTENSION_BUILD_DIR" in message
    assert artifacts(disk) == [], "nothing half-published"
    filler.unlink()
    outcome = call(sources, disk)
    assert outcome.value == 42
    assert "cpp-extension-tools clear" not in outcome.stderr
    assert len(artifacts(disk)) == 1


@pytest.mark.slow
def test_disk_full_at_every_stage_of_a_build_then_freed(tmp_path: Path, compilers: CompilerLog,
                                                        tmpfs: Any) -> None:
    """The disk fills at whatever point of the build (objects, link, state, publication) and is then freed.

    Whatever the point, the next call loads the current value; a damaged object, a cut-short binary or
    half a state file left in the build folder must never need a clear.
    """
    disk = tmpfs("size=8m")
    sources = write_module(tmp_path / "src", functions={"answer": 42, "other": 7})
    assert call(sources, disk).value == 42
    used = sum(p.stat().st_size for p in disk.rglob("*") if p.is_file())
    value = 42
    for leave in sorted({used // 8, used // 4, used // 2, (3 * used) // 4, used, used + (used // 2)}):
        set_value(source(sources, "answer.c"), value, value + 1)
        value += 1
        filler = _fill(disk, leave)
        first = call(sources, disk)
        if "error" in first.result:
            assert first.returncode == 0, first.stderr
            assert "space" in first.result["message"] or "full" in first.result["message"], first.result
        else:
            assert first.value == value, leave
        filler.unlink()
        second = call(sources, disk)
        assert second.value == value, f"free space {leave} B: {second.result}\n{second.stderr}"
        assert "cpp-extension-tools clear" not in second.stderr


# --------------------------------------------------------------------------- §2 failed builds

@pytest.mark.slow
def test_failed_build_of_a_syntax_error_then_repaired(tmp_path: Path, compilers: CompilerLog) -> None:
    root = tmp_path / "cache"
    sources = write_module(tmp_path / "src")
    answer = Path(source(sources, "answer.c"))
    good = answer.read_text()
    answer.write_text(good.replace("return", "retrun oops"))
    kind, message = call(sources, root).error
    assert kind == "BuildError" and "answer.c" in message, message
    assert artifacts(root) == []
    kind, _ = call(sources, root).error  # the same sources fail the same way, cleanly
    assert kind == "BuildError"
    answer.write_text(good)
    compilers.reset()
    outcome = call(sources, root)
    assert outcome.value == 42
    assert "answer.c" in compilers.compiled_sources()
    assert not list(module_folder(root).glob("failure-*.json")), "a success clears the failure record"


@pytest.mark.slow
def test_failed_build_caused_by_the_environment_builds_once_the_environment_is_right(
        tmp_path: Path, compilers: CompilerLog, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cache"
    headers = tmp_path / "cpath_headers"
    headers.mkdir()
    (headers / "cpath_only.h").write_text("#define CPATH_VALUE 42\n")
    sources = write_module(tmp_path / "src")
    answer = Path(source(sources, "answer.c"))
    answer.write_text('#include "cpath_only.h"\n' + answer.read_text().replace("FromLong(42)", "FromLong(CPATH_VALUE)"))
    monkeypatch.delenv("CPATH", raising=False)
    kind, message = call(sources, root).error
    assert kind == "BuildError" and "cpath_only.h" in message, message
    outcome = call(sources, root, env={"CPATH": str(headers)})
    assert outcome.value == 42
    # And back: without CPATH the build fails again (it is no cached success of the other environment),
    # then with CPATH it loads from the cache without compiling.
    kind, _ = call(sources, root).error
    assert kind == "BuildError"
    compilers.reset()
    assert call(sources, root, env={"CPATH": str(headers)}).value == 42
    assert compilers.compiles() == []


def test_failed_build_for_a_missing_header_builds_once_the_header_exists(tmp_path: Path,
                                                                         compilers: CompilerLog) -> None:
    """The source is unchanged: what fixed the build is a file created in an include folder."""
    root = tmp_path / "cache"
    include = tmp_path / "include"
    include.mkdir()
    sources = write_module(tmp_path / "src")
    answer = Path(source(sources, "answer.c"))
    answer.write_text('#include "later.h"\n' + answer.read_text().replace("FromLong(42)", "FromLong(LATER)"))
    kind, message = call(sources, root, extra_include_paths=[str(include)]).error
    assert kind == "BuildError" and "later.h" in message
    (include / "later.h").write_text("#define LATER 42\n")
    assert call(sources, root, extra_include_paths=[str(include)]).value == 42


def test_module_without_its_pyinit_function(tmp_path: Path, compilers: CompilerLog) -> None:
    root = tmp_path / "cache"
    sources = write_module(tmp_path / "src")
    init = Path(source(sources, "module.c"))
    init.write_text(init.read_text().replace("CONCAT(PyInit_, TORCH_EXTENSION_NAME)", "PyInit_some_other_name"))
    kind, message = call(sources, root).error
    assert kind == "BuildError", message
    assert f"PyInit_{NAME}" in message and "PyMODINIT_FUNC" in message, message
    assert "TORCH_EXTENSION_NAME" in message, "it says what to define"
    assert artifacts(root) == [], "nothing published"
    assert not list(module_folder(root).glob("latest-*"))
    # Defining it repairs the module without a clear.
    init.write_text(init.read_text().replace("PyInit_some_other_name", "CONCAT(PyInit_, TORCH_EXTENSION_NAME)"))
    assert call(sources, root).value == 42


# --------------------------------------------------------------------------- §7.1 the stat fast path

def _source_record(root: Path, path: str) -> dict[str, Any]:
    (artifact,) = artifacts(root)
    manifest = json.loads((artifact / "manifest.json").read_text())
    return next(r for r in manifest["inputs"] if r["path"] == path)


@pytest.mark.parametrize("how", ["renamed_over", "in_place"])
def test_same_size_edit_with_the_old_mtime_restored(built: tuple[list[str], Path], compilers: CompilerLog,
                                                    how: str) -> None:
    sources, root = built
    answer = source(sources, "answer.c")
    assert _source_record(root, answer)["mtime_ns"] != 0, "the fast path is in use (stamps trusted)"
    path = Path(answer)
    new = path.read_bytes().replace(b"FromLong(42)", b"FromLong(24)")
    if how == "renamed_over":
        replace_keeping_stamps(path, new)
    else:
        garbage_like(path, new)
    assert call(sources, root).value == 24
    assert compilers.compiled_sources() == ["answer.c"]
    compilers.reset()
    assert call(sources, root).value == 24 and compilers.calls() == []


def test_same_size_header_edit_with_the_old_mtime_restored(tmp_path: Path, compilers: CompilerLog) -> None:
    root = tmp_path / "cache"
    sources = write_module(tmp_path / "src", header="#define HEADER_VALUE 42\n")
    answer = Path(source(sources, "answer.c"))
    answer.write_text(answer.read_text().replace("FromLong(42)", "FromLong(HEADER_VALUE)"))
    assert call(sources, root).value == 42
    header = tmp_path / "src" / "shared.h"
    garbage_like(header, b"#define HEADER_VALUE 24\n")
    assert call(sources, root).value == 24


def test_published_binary_overwritten_in_place_with_its_mtime_restored(built: tuple[list[str], Path],
                                                                       compilers: CompilerLog) -> None:
    sources, root = built
    (artifact,) = artifacts(root)
    garbage_like(artifact / f"{NAME}.so")
    outcome = call(sources, root, ("answer", "other"))
    assert outcome.values == {"answer": 42, "other": 7}  # exit status 0: the garbage was never mapped
    repaired(outcome, "damaged")
    assert artifacts(root) == [artifact]
    assert compilers.compiles() == [], "the build folder still had the intact binary"
    assert "damaged" not in call(sources, root).stderr


# --------------------------------------------------------------------------- §7.2 nothing blocks

def _unblock(fifo: Path) -> None:
    """Give EOF to whatever process is blocked opening ``fifo`` for reading (a compiler), then remove it."""
    for _ in range(50):
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as e:
            if e.errno != errno.ENXIO:
                break
        time.sleep(0.01)
    with contextlib.suppress(OSError):
        fifo.unlink()


@pytest.mark.parametrize("where", ["manifest", "latest"])
def test_fifo_in_the_cache_does_not_block_the_warm_path(built: tuple[list[str], Path], compilers: CompilerLog,
                                                        where: str) -> None:
    sources, root = built
    (artifact,) = artifacts(root)
    path = artifact / "manifest.json" if where == "manifest" else module_folder(root) / f"latest-{artifact.name[:16]}"
    path.unlink()
    os.mkfifo(path)
    try:
        outcome = call(sources, root, timeout=60)
    finally:
        _unblock(path)
    assert outcome.value == 42
    assert call(sources, root, timeout=60).value == 42


@pytest.mark.slow  # 60 s while it hangs
def test_fifo_where_a_recorded_header_was_does_not_hang(tmp_path: Path, compilers: CompilerLog) -> None:
    root = tmp_path / "cache"
    sources = write_module(tmp_path / "src", header="#define HEADER_VALUE 42\n")
    assert call(sources, root).value == 42
    header = tmp_path / "src" / "shared.h"
    header.unlink()
    os.mkfifo(header)
    try:
        outcome = call(sources, root, timeout=60)
    finally:
        _unblock(header)
    assert outcome.returncode == 0, outcome.stderr
    if "error" in outcome.result:
        assert "shared.h" in outcome.result["message"], outcome.result
    else:
        assert outcome.value == 42


def test_fifo_as_a_source_is_a_clear_error(tmp_path: Path, compilers: CompilerLog) -> None:
    root = tmp_path / "cache"
    sources = write_module(tmp_path / "src")
    answer = Path(source(sources, "answer.c"))
    answer.unlink()
    os.mkfifo(answer)
    try:
        kind, message = call(sources, root, timeout=60).error
    finally:
        _unblock(answer)
    assert kind in ("ValueError", "FileNotFoundError") and str(answer) in message, message
    assert compilers.calls() == []


# --------------------------------------------------------------------------- §5 other configurations

def _two_configurations(tmp_path: Path) -> tuple[list[str], Path, dict[str, Any], dict[str, Any]]:
    root = tmp_path / "cache"
    sources = write_module(tmp_path / "src")
    answer = Path(source(sources, "answer.c"))
    answer.write_text(answer.read_text().replace("FromLong(42)", "FromLong(ANSWER)"))
    return sources, root, {"extra_cflags": ["-O1", "-DANSWER=1"]}, {"extra_cflags": ["-O2", "-DANSWER=2"]}


def _artifact_of(root: Path, before: list[Path]) -> Path:
    (new,) = [a for a in artifacts(root) if a not in before]
    return new


@pytest.mark.slow
def test_hint_naming_another_configurations_artifact_is_ignored(tmp_path: Path, compilers: CompilerLog) -> None:
    sources, root, a, b = _two_configurations(tmp_path)
    assert call(sources, root, **a).value == 1
    artifact_a = _artifact_of(root, [])
    assert call(sources, root, **b).value == 2
    artifact_b = _artifact_of(root, [artifact_a])
    hint_a = module_folder(root) / f"latest-{artifact_a.name[:16]}"
    hint_a.write_text(artifact_b.name)
    compilers.reset()
    assert call(sources, root, **a).value == 1, "A loads its own binary"
    assert compilers.compiles() == [], "found by its folder, without a build"
    assert artifact_b.is_dir() and (artifact_b / "manifest.json").is_file(), "B's artifact is not deleted"
    assert call(sources, root, **b).value == 2
    # A hint naming a folder outside artifacts/ is as harmless.
    hint_a.write_text(f"../../{artifact_b.name}")
    assert call(sources, root, **a).value == 1 and compilers.compiles() == []


@pytest.mark.slow
def test_hint_naming_another_configurations_artifact_while_building(tmp_path: Path,
                                                                    compilers: CompilerLog) -> None:
    """The same hint when A must build (its artifact is gone): B's artifact survives the repair pass."""
    sources, root, a, b = _two_configurations(tmp_path)
    assert call(sources, root, **a).value == 1
    artifact_a = _artifact_of(root, [])
    assert call(sources, root, **b).value == 2
    artifact_b = _artifact_of(root, [artifact_a])
    shutil.rmtree(artifact_a)
    (module_folder(root) / f"latest-{artifact_a.name[:16]}").write_text(artifact_b.name)
    outcome = call(sources, root, **a)
    assert outcome.value == 1
    assert "damaged" not in outcome.stderr
    assert artifact_b.is_dir() and call(sources, root, **b).value == 2


def _wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@pytest.mark.slow
def test_failure_record_of_another_configuration_is_ignored(tmp_path: Path, compilers: CompilerLog) -> None:
    """B failed; its record copied to A's name. A process of A that waited for the lock builds A itself.

    A waiter re-raises a failure recorded while it waited (the build it waited for) instead of
    compiling again: a record of another configuration must never pass as that.
    """
    sources, root, a, _ = _two_configurations(tmp_path)
    bad = {"extra_cflags": ["-O2", "-DANSWER=syntax error here"]}
    assert call(sources, root, **a).value == 1
    artifact_a = _artifact_of(root, [])
    kind, message_b = call(sources, root, **bad).error
    assert kind == "BuildError"
    module = module_folder(root)
    (failure_b,) = module.glob("failure-*.json")
    failure_a = module / f"failure-{artifact_a.name[:16]}.json"
    shutil.rmtree(artifact_a)
    # Hold the module lock, start A (it reads its failure record, finds none, and waits), copy B's record
    # to A's name meanwhile, then release the lock.
    import filelock

    lock = filelock.FileLock(str(module / ".lock"))
    lock.acquire()
    spec = {"name": NAME, "sources": sources, "root": str(root), "functions": ["answer"],
            "kwargs": {**a, "verbose": True}, "log_level": "INFO"}
    process = subprocess.Popen([sys.executable, "-c", _CALL, json.dumps(spec)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        seen = []
        for line in process.stderr:
            seen.append(line)
            if "cache miss" in line:
                break
        assert any("cache miss" in line for line in seen), "".join(seen)
        time.sleep(1.0)  # past its read of the failure record, waiting for the lock
        shutil.copy(failure_b, failure_a)
        assert process.poll() is None and not artifact_a.exists(), "A waits for the lock, not built yet"
    finally:
        lock.release()
    try:
        stdout, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("A did not finish")
    result = last_json(stdout)
    assert result == {"values": {"answer": 1}}, (result, message_b)
    # And a fresh process of A, with B's record copied again, loads from the cache.
    shutil.copy(failure_b, failure_a)
    assert call(sources, root, **a).value == 1


@pytest.mark.slow
def test_failure_record_of_another_configuration_does_not_stop_a_fresh_build(tmp_path: Path,
                                                                             compilers: CompilerLog) -> None:
    sources, root, a, _ = _two_configurations(tmp_path)
    bad = {"extra_cflags": ["-O2", "-DANSWER=syntax error here"]}
    assert call(sources, root, **a).value == 1
    artifact_a = _artifact_of(root, [])
    assert call(sources, root, **bad).error[0] == "BuildError"
    (failure_b,) = module_folder(root).glob("failure-*.json")
    shutil.rmtree(artifact_a)
    shutil.copy(failure_b, module_folder(root) / f"failure-{artifact_a.name[:16]}.json")
    compilers.reset()
    assert call(sources, root, **a).value == 1
    assert compilers.compiles() == [], "A's build folder is intact: relinked or republished, nothing compiled"
    assert not (module_folder(root) / f"failure-{artifact_a.name[:16]}.json").exists(), "A's success cleared it"
