"""Shared fixtures: a private cache root per test, compilers that log their calls, subprocess runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cpp_extension_tools import _settings

REPO = Path(__file__).resolve().parent.parent


class CompilerLog:
    """CC/CXX wrapper scripts that append each invocation to a log, then run the real compiler.

    Compile counts in tests come from here, never from the library's own log.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.log = folder / "compiler-calls.log"
        self.cc = self._wrapper("cc-logged", shutil.which("gcc") or "cc")
        self.cxx = self._wrapper("cxx-logged", shutil.which("g++") or "c++")

    def _wrapper(self, name: str, real: str) -> str:
        path = self.folder / name
        path.write_text(textwrap.dedent(f"""\
            #!/bin/sh
            printf '%s %s\\n' "{name}" "$*" >> "{self.log}"
            if [ -n "$COMPILE_DELAY" ]; then case " $* " in *" -c "*) sleep "$COMPILE_DELAY" ;; esac; fi
            exec "{real}" "$@"
            """))
        path.chmod(0o755)
        return str(path)

    @property
    def env(self) -> dict[str, str]:
        return {"CC": self.cc, "CXX": self.cxx}

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def _compiled(self) -> list[tuple[str, str]]:
        """(source, invocation) for each invocation that compiled a source (``-c``)."""
        result = []
        for line in self.calls():
            words = line.split()
            if "-c" in words:
                result.append((words[words.index("-c") + 1], line))
        return result

    def compiles(self, suffix: str = "") -> list[str]:
        """Invocations that compiled a source, optionally only sources ending in ``suffix``."""
        return [line for source, line in self._compiled() if source.endswith(suffix)]

    def compiled_sources(self) -> list[str]:
        """File names of the compiled sources, one entry per compile, sorted."""
        return sorted(os.path.basename(source) for source, _ in self._compiled())

    def links(self) -> list[str]:
        return [line for line in self.calls() if " -shared" in line and " -c " not in line]

    def reset(self) -> None:
        if self.log.exists():
            self.log.unlink()


@pytest.fixture
def compilers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CompilerLog:
    folder = tmp_path / "compilers"
    folder.mkdir()
    log = CompilerLog(folder)
    for key, value in log.env.items():
        monkeypatch.setenv(key, value)
    return log


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("CACHED_CPP_EXTENSION_BUILD_DIR", str(root))
    return root


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Every setting of the registry: one a developer exported must not change what the tests see.
    for variable in (*(setting.name for setting in _settings.SETTINGS), "COMPILE_DELAY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    yield


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """mount(options) -> a fresh tmpfs folder (a small one fills up: full-disk tests); skipped where this
    process may not mount."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        if shutil.which("mount") is None or shutil.which("umount") is None:
            pytest.skip("mount/umount are not installed (util-linux; ./dev.sh test installs it as root)")
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def build_template_cache(folder: Path, name: str) -> Path:
    """A cache root under ``folder`` holding one real module ``name`` (an artifact, its build folder, a hint),
    built in another process; CLI tests copy it instead of building per test."""
    sources = write_module(folder / "src")
    root = folder / "cache"
    run_python(f"""
        from cpp_extension_tools import cached_load_torch_cpp_extension
        assert cached_load_torch_cpp_extension({name!r}, {sources!r}).answer() == 42
    """, env={"CACHED_CPP_EXTENSION_BUILD_DIR": str(root)}, timeout=300)
    return root


def write_module(folder: Path, name_macro: bool = True, functions: dict[str, int] | None = None,
                 header: str | None = None) -> list[str]:
    """Write a C module whose functions return constants; one .c file per function plus the init file."""
    functions = functions or {"answer": 42}
    folder.mkdir(parents=True, exist_ok=True)
    include = '#include "shared.h"\n' if header is not None else ""
    if header is not None:
        (folder / "shared.h").write_text(header)
    sources = []
    for fname, value in functions.items():
        path = folder / f"{fname}.c"
        _write_if_changed(path, f"#include <Python.h>\n{include}"
                          f"PyObject *{fname}(PyObject *self, PyObject *unused) "
                          f"{{ (void)self; (void)unused; return PyLong_FromLong({value}); }}\n")
        sources.append(str(path))
    decls = "".join(f"PyObject *{f}(PyObject *, PyObject *);\n" for f in functions)
    methods = "".join(f'    {{"{f}", {f}, METH_NOARGS, NULL}},\n' for f in functions)
    init = folder / "module.c"
    _write_if_changed(init, textwrap.dedent("""\
        #include <Python.h>
        #define CONCAT_(a, b) a##b
        #define CONCAT(a, b) CONCAT_(a, b)
        #define STR_(x) #x
        #define STR(x) STR_(x)
        """) + decls + "static PyMethodDef methods[] = {\n" + methods + "    {NULL, NULL, 0, NULL}};\n" +
        "static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, .m_name = STR(TORCH_EXTENSION_NAME), "
        ".m_size = -1, .m_methods = methods};\n"
        "PyMODINIT_FUNC CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&def); }\n")
    return sorted([*sources, str(init)])


def _write_if_changed(path: Path, text: str) -> None:
    """Like an editor: untouched files keep their mtime, so ninja sees only real edits."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def run_python(code: str, env: dict[str, str] | None = None, cwd: str | Path | None = None,
               timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (this one's), with the repo importable."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, cwd=cwd,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


class BuildRuns:
    """Whether a build ran in a module's build folders since ``mark()``: every build rewrites build.log.

    Compile counts cannot tell: a repair whose build folder is up to date runs ninja, which compiles
    nothing, and the compilers' versions are cached in the build folder.
    """

    def __init__(self, module_folder: Path) -> None:
        self.logs = module_folder / "builds"

    def mark(self) -> None:
        for log in self.logs.glob("*/build.log"):
            os.utime(log, (0, 0))

    def ran(self) -> bool:
        return any(log.stat().st_mtime > 0 for log in self.logs.glob("*/build.log"))


def last_json(output: str) -> object:
    """The last line of ``output`` that is a JSON document (subprocesses report results that way)."""
    for line in reversed(output.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    raise AssertionError(f"no JSON line in output:\n{output}")
