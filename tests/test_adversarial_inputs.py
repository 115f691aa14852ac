"""Every input the compiler and linker read decides the binary: attacks on what the cache key and manifest see.

Each case builds a small C module whose ``value()`` comes from the input under attack, changes that
input the way a user, a package manager or an editor would, and checks in a fresh process that the
new value is loaded (never the stale binary), with compile counts taken from logging compilers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cpp_extension_tools._build import inputs as _inputs
from tests.conftest import CompilerLog, last_json, run_python

NAME = "adv_inputs"


def write_value_module(folder: Path, body: str = "return PyLong_FromLong(VALUE);", includes: str = "") -> list[str]:
    """One C source defining value(); ``includes`` decides VALUE (through a header, a define, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "module.c"
    source.write_text(textwrap.dedent("""\
        #include <Python.h>
        {includes}
        #define CONCAT_(a, b) a##b
        #define CONCAT(a, b) CONCAT_(a, b)
        #define STR_(x) #x
        #define STR(x) STR_(x)
        static PyObject *value(PyObject *self, PyObject *unused) {{ (void)self; (void)unused; {body} }}
        static PyMethodDef methods[] = {{{{"value", value, METH_NOARGS, NULL}}, {{NULL, NULL, 0, NULL}}}};
        static struct PyModuleDef def = {{PyModuleDef_HEAD_INIT, .m_name = STR(TORCH_EXTENSION_NAME),
                                         .m_size = -1, .m_methods = methods}};
        PyMODINIT_FUNC CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {{ return PyModule_Create(&def); }}
        """).format(includes=includes, body=body))
    return [str(source)]


def load_value(sources: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
               **kwargs: object) -> int:
    """value() of the module as a fresh process loads it."""
    result = run_python(f"""
        import json, cpp_extension_tools as c
        m = c.cached_load_torch_cpp_extension({NAME!r}, {sources!r}, **{kwargs!r})
        print(json.dumps(m.value()))
        """, env=env, cwd=cwd)
    value = last_json(result.stdout)
    assert isinstance(value, int)
    return value


def write_header(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#define VALUE {value}\n")


def replace_like_a_package_manager(path: Path, text: str) -> None:
    """A new file renamed over the old one (dpkg, rpm, pip): new inode, the folder's mtime changes."""
    staging = path.with_name(path.name + ".dpkg-new")
    staging.write_text(text)
    os.replace(staging, path)


# ----------------------------------------------------------------------- headers found through flags

@pytest.mark.parametrize("form", ["-isystem", "-idirafter", "-I", "-iquote", "-include"])
def test_header_reached_through_a_flag_is_tracked(tmp_path: Path, cache_root: Path, compilers: CompilerLog,
                                                  form: str) -> None:
    headers = tmp_path / "vendored"
    header = headers / "value.h"
    write_header(header, 1)
    if form == "-include":
        flags, includes = ["-include", str(header)], ""
    else:
        flags, includes = [form, str(headers)], ('#include "value.h"' if form == "-iquote" else "#include <value.h>")
    sources = write_value_module(tmp_path / "src", includes=includes)
    assert load_value(sources, extra_cflags=flags) == 1
    write_header(header, 2)  # edited in place, same size
    compilers.reset()
    assert load_value(sources, extra_cflags=flags) == 2
    assert len(compilers.compiles()) == 1
    compilers.reset()
    assert load_value(sources, extra_cflags=flags) == 2
    assert compilers.compiles() == []


def test_header_reached_through_cpath_is_tracked_and_cpath_is_in_the_key(tmp_path: Path, cache_root: Path,
                                                                         compilers: CompilerLog) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    write_header(first / "value.h", 1)
    write_header(second / "value.h", 2)
    sources = write_value_module(tmp_path / "src", includes="#include <value.h>")
    assert load_value(sources, env={"CPATH": str(first)}) == 1
    assert load_value(sources, env={"CPATH": str(second)}) == 2  # another search path: another binary
    write_header(first / "value.h", 3)
    assert load_value(sources, env={"CPATH": str(first)}) == 3


def test_relative_include_flag_means_the_callers_folder(tmp_path: Path, cache_root: Path,
                                                        compilers: CompilerLog) -> None:
    project = tmp_path / "project"
    write_header(project / "inc" / "value.h", 5)
    sources = write_value_module(project / "src", includes="#include <value.h>")
    assert load_value(sources, cwd=project, extra_cflags=["-Iinc"]) == 5
    write_header(project / "inc" / "value.h", 6)
    assert load_value(sources, cwd=project, extra_cflags=["-Iinc"]) == 6
    other = tmp_path / "elsewhere"
    write_header(other / "inc" / "value.h", 7)  # the same flag from another folder means another folder
    assert load_value(sources, cwd=other, extra_cflags=["-Iinc"]) == 7


# ----------------------------------------------------------------------- headers that would now be found first

def test_header_created_later_in_an_earlier_search_folder_is_found(tmp_path: Path, cache_root: Path,
                                                                   compilers: CompilerLog) -> None:
    early, late = tmp_path / "early", tmp_path / "late"
    early.mkdir()
    write_header(late / "value.h", 1)
    sources = write_value_module(tmp_path / "src", includes="#include <value.h>")
    flags = ["-I", str(early), "-I", str(late)]
    assert load_value(sources, extra_cflags=flags) == 1
    write_header(early / "value.h", 2)  # now found first
    assert load_value(sources, extra_cflags=flags) == 2


def test_header_created_later_in_a_subfolder_of_an_earlier_search_folder(tmp_path: Path, cache_root: Path,
                                                                         compilers: CompilerLog) -> None:
    early, late = tmp_path / "early", tmp_path / "late"
    (early / "lib").mkdir(parents=True)  # the subfolder exists: only its own mtime changes
    write_header(late / "lib" / "value.h", 1)
    sources = write_value_module(tmp_path / "src", includes="#include <lib/value.h>")
    flags = ["-I", str(early), "-I", str(late)]
    assert load_value(sources, extra_cflags=flags) == 1
    write_header(early / "lib" / "value.h", 2)
    assert load_value(sources, extra_cflags=flags) == 2


def test_header_beside_the_source_shadows_one_from_an_include_path(tmp_path: Path, cache_root: Path,
                                                                   compilers: CompilerLog) -> None:
    write_header(tmp_path / "inc" / "value.h", 1)
    sources = write_value_module(tmp_path / "src", includes='#include "value.h"')
    assert load_value(sources, extra_include_paths=[str(tmp_path / "inc")]) == 1
    write_header(tmp_path / "src" / "value.h", 2)  # "..." looks beside the including file first
    assert load_value(sources, extra_include_paths=[str(tmp_path / "inc")]) == 2


def test_has_include_of_a_file_that_did_not_exist(tmp_path: Path, cache_root: Path,
                                                  compilers: CompilerLog) -> None:
    includes = '#if __has_include("optional.h")\n#include "optional.h"\n#else\n#define VALUE 0\n#endif'
    sources = write_value_module(tmp_path / "src", includes=includes)
    assert load_value(sources) == 0
    write_header(tmp_path / "src" / "optional.h", 9)
    assert load_value(sources) == 9
    (tmp_path / "src" / "optional.h").unlink()  # and back: the earlier binary again, not a stale one
    assert load_value(sources) == 0


def test_an_unrelated_new_file_costs_at_most_one_rebuild(tmp_path: Path, cache_root: Path,
                                                         compilers: CompilerLog) -> None:
    write_header(tmp_path / "src" / "value.h", 4)
    sources = write_value_module(tmp_path / "src", includes='#include "value.h"')
    assert load_value(sources) == 4
    (tmp_path / "src" / "notes.txt").write_text("an editor's swap file, a note")
    assert load_value(sources) == 4
    compilers.reset()
    assert load_value(sources) == 4  # settled: a plain hit again
    assert compilers.calls() == []


# ----------------------------------------------------------------------- system headers

def test_system_header_replaced_by_a_package_upgrade(tmp_path: Path, cache_root: Path,
                                                     compilers: CompilerLog) -> None:
    """A compiler whose built-in search path holds a folder (as /usr/include): its headers are system
    headers, checked by their folder's mtime, which a package manager's rename changes."""
    system = tmp_path / "sysroot-include"
    write_header(system / "vendor_value.h", 1)
    wrapper = tmp_path / "cc-with-system-folder"
    wrapper.write_text(f'#!/bin/sh\nexec "{compilers.cc}" -idirafter "{system}" "$@"\n')
    wrapper.chmod(0o755)
    sources = write_value_module(tmp_path / "src", includes="#include <vendor_value.h>")
    env = {"CC": str(wrapper)}
    assert load_value(sources, env=env) == 1
    manifest = next(cache_root.glob(f"{NAME}/artifacts/*/manifest.json")).read_text()
    assert str(system / "vendor_value.h") not in manifest  # not tracked file by file
    assert f'"{system}"' in manifest  # but its folder is
    replace_like_a_package_manager(system / "vendor_value.h", "#define VALUE 2\n")
    assert load_value(sources, env=env) == 2


def test_headers_under_the_cuda_toolkit_root_but_outside_its_include_folders_are_the_users(tmp_path: Path) -> None:
    toolkit = tmp_path / "conda-env"
    (toolkit / "include").mkdir(parents=True)
    project = toolkit / "lib" / "python3.11" / "site-packages" / "mypkg" / "csrc"
    project.mkdir(parents=True)
    system = _inputs.system_prefixes([], str(toolkit))
    torch_prefix = str(tmp_path / "torch" / "include") + os.sep
    assert _inputs.header_kind(str(project / "kernel.cuh"), torch_prefix, system, ()) == "user"
    assert _inputs.header_kind(str(toolkit / "include" / "cuda_runtime.h"), torch_prefix, system, ()) == "system"
    assert _inputs.header_kind(str(tmp_path / "torch" / "include" / "ATen" / "a.h"), torch_prefix, system,
                               ()) == "torch"


def test_header_real_paths_are_resolved_as_realpath_does(tmp_path: Path) -> None:
    # real_paths resolves each folder once: a symlinked folder, a symlinked header (whose target lies
    # elsewhere) and a relative path must still come out as os.path.realpath says.
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "target.h").write_text("")
    (tmp_path / "real" / "sub" / "plain.h").write_text("")
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "sub" / "alias.h").symlink_to(tmp_path / "elsewhere" / "target.h")
    paths = [str(tmp_path / "linked" / "sub" / "plain.h"), str(tmp_path / "linked" / "sub" / "alias.h"),
             str(tmp_path / "real" / "sub" / "plain.h"), str(tmp_path / "linked" / "sub" / "missing.h"),
             os.path.relpath(tmp_path / "linked" / "sub" / "plain.h")]
    resolved = _inputs.real_paths([*paths, paths[0]])
    assert resolved == {p: os.path.realpath(p) for p in paths}
    assert resolved[paths[1]] == str((tmp_path / "elsewhere" / "target.h").resolve())


# ----------------------------------------------------------------------- linker inputs

def _static_library(folder: Path, value: int) -> Path:
    if shutil.which("ar") is None:
        pytest.skip("ar is not installed (binutils; ./dev.sh test installs it as root)")
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "vendor.c"
    source.write_text(f"int vendor_value(void) {{ return {value}; }}\n")
    subprocess.run(["gcc", "-fPIC", "-c", str(source), "-o", str(folder / "vendor.o")], check=True)
    library = folder / "libvendor.a"
    library.unlink(missing_ok=True)
    subprocess.run(["ar", "rcs", str(library), str(folder / "vendor.o")], check=True)
    return library


@pytest.mark.parametrize("spelling", ["-L -l", "path"])
def test_static_library_in_ldflags_is_an_input(tmp_path: Path, cache_root: Path, compilers: CompilerLog,
                                               spelling: str) -> None:
    libs = tmp_path / "libs"
    library = _static_library(libs, 10)
    sources = write_value_module(tmp_path / "src", includes="int vendor_value(void);",
                                 body="return PyLong_FromLong(vendor_value());")
    ldflags = ["-L", str(libs), "-lvendor"] if spelling == "-L -l" else [str(library)]
    assert load_value(sources, extra_ldflags=ldflags) == 10
    time.sleep(0.01)
    _static_library(libs, 11)
    compilers.reset()
    assert load_value(sources, extra_ldflags=ldflags) == 11
    assert len(compilers.links()) == 1


# ----------------------------------------------------------------------- edits during a build

@pytest.mark.slow
def test_header_edited_while_the_build_runs_is_never_published_as_the_new_content(
        tmp_path: Path, cache_root: Path, compilers: CompilerLog) -> None:
    header = tmp_path / "src" / "value.h"
    write_header(header, 1)
    sources = write_value_module(tmp_path / "src", includes='#include "value.h"')
    editor = threading.Timer(1.0, write_header, (header, 2))  # while the compiler sleeps before compiling
    editor.start()
    try:
        value = load_value(sources, env={"COMPILE_DELAY": "2"})
    finally:
        editor.join()
    assert value == 2  # built again after the edit, not the binary of the old content under the new hash
    compilers.reset()
    assert load_value(sources) == 2
    assert compilers.compiles() == []


# ----------------------------------------------------------------------- a warm cache needs no compiler

def test_warm_cache_loads_without_any_compiler(tmp_path: Path, cache_root: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("CC", "CXX"):
        monkeypatch.delenv(variable, raising=False)
    write_header(tmp_path / "src" / "value.h", 3)
    sources = write_value_module(tmp_path / "src", includes='#include "value.h"')
    assert load_value(sources) == 3
    empty = tmp_path / "no-compilers-here"
    empty.mkdir()
    env = {"PATH": str(empty)}
    assert shutil.which("cc", path=str(empty)) is None
    assert load_value(sources, env=env) == 3


def test_replaced_compiler_is_a_miss(tmp_path: Path, cache_root: Path, compilers: CompilerLog) -> None:
    sources = write_value_module(tmp_path / "src", includes="#define VALUE 8")
    assert load_value(sources) == 8
    wrapper = Path(compilers.cc)
    replace_like_a_package_manager(wrapper, wrapper.read_text() + "# upgraded\n")
    wrapper.chmod(0o755)
    compilers.reset()
    assert load_value(sources) == 8
    assert len(compilers.compiles()) == 1


# ----------------------------------------------------------------------- paths that ninja and the shell could misread

@pytest.mark.parametrize("odd", ["dollar$HOME", "dollar$x", "co:lon", "hash#sign", "single'quote", 'double"quote',
                                 "sp ace", "caf\u00e9", "dollar$ space"])
def test_odd_characters_in_source_and_cache_paths(tmp_path: Path, compilers: CompilerLog, odd: str) -> None:
    folder = tmp_path / odd
    write_header(folder / "inc" / "value.h", 21)
    decoy = tmp_path / "dollar"  # what "$x" would expand to: ninja must never compile this one
    write_value_module(decoy / "src", includes="#define VALUE -1")
    sources = write_value_module(folder / "src", includes="#include <value.h>")
    root = str(folder / "cache")
    kwargs = {"build_directory": root, "extra_include_paths": [str(folder / "inc")]}
    assert load_value(sources, **kwargs) == 21
    write_header(folder / "inc" / "value.h", 22)
    assert load_value(sources, **kwargs) == 22
    assert not any(str(decoy) + os.sep in line for line in compilers.compiles())


@pytest.mark.parametrize("argument", ["sources", "extra_include_paths"])
def test_line_break_in_a_path_is_refused_before_anything_is_written(tmp_path: Path, cache_root: Path,
                                                                    argument: str) -> None:
    import cpp_extension_tools as c

    odd = tmp_path / "line\nbreak"
    sources = write_value_module(odd if argument == "sources" else tmp_path / "src", includes="#define VALUE 1")
    include = [str(odd)] if argument == "extra_include_paths" else []
    odd.mkdir(exist_ok=True)
    with pytest.raises(ValueError, match=f"{argument}: .* line break"):
        c.cached_load_torch_cpp_extension(NAME, sources, extra_include_paths=include)
    assert not cache_root.exists()
