"""The generated extension both tools build: N sources, a declarations header, a shared header.

Valid C and C++, written as .c files (torch's load() compiles them as C++, this library as C) or as
.cpp files (both compile them as C++: the same commands both ways). f0 holds the module init.
``shared.h`` defines SHARED_OFFSET and is included by f1..f(N/2) only, so a header edit must rebuild
exactly those objects. ``f<k>()`` returns ``RESULT_BASE + k + SHARED_OFFSET + variant(k)``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["RESULT_BASE", "ModuleFiles", "write_module"]

RESULT_BASE = 1000
DECLS = "bench_decls.h"
SHARED = "bench_shared.h"


class ModuleFiles:
    """Where a generated module lives, and what its functions return."""

    def __init__(self, folder: Path, n_sources: int, suffix: str = ".c") -> None:
        self.folder = folder
        self.n_sources = n_sources
        self.suffix = suffix
        self.shared_offset = 0
        self.variants: dict[int, int] = {}

    @property
    def sources(self) -> list[str]:
        return [str(self.folder / f"f{k}{self.suffix}") for k in range(self.n_sources)]

    def includes_shared(self, k: int) -> bool:
        return 1 <= k <= max(1, self.n_sources // 2)

    def expected(self) -> dict[str, int]:
        return {f"f{k}": RESULT_BASE + k + self.variants.get(k, 0)
                + (self.shared_offset if self.includes_shared(k) else 0) for k in range(self.n_sources)}

    def write(self) -> None:
        """(Re)write every file whose text changed; unchanged files keep their mtime, as with an editor."""
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_if_changed(self.folder / DECLS, _decls_text(self.n_sources))
        _write_if_changed(self.folder / SHARED, f"#define SHARED_OFFSET {self.shared_offset}\n")
        for k in range(self.n_sources):
            _write_if_changed(self.folder / f"f{k}{self.suffix}", self._source_text(k))

    def _source_text(self, k: int) -> str:
        shared = f'#include "{SHARED}"\n' if self.includes_shared(k) else "#define SHARED_OFFSET 0\n"
        body = (f'#include "{DECLS}"\n{shared}\n'
                f"PyObject *bench_f{k}(PyObject *self, PyObject *unused)\n{{\n    (void)self;\n    (void)unused;\n"
                f"    return PyLong_FromLong({RESULT_BASE + k + self.variants.get(k, 0)} + SHARED_OFFSET);\n}}\n")
        return body + (_init_text(self.n_sources) if k == 0 else "")


def write_module(folder: Path, n_sources: int, suffix: str = ".c") -> ModuleFiles:
    files = ModuleFiles(folder, n_sources, suffix)
    files.write()
    return files


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _decls_text(n_sources: int) -> str:
    declarations = "\n".join(f"PyObject *bench_f{k}(PyObject *self, PyObject *unused);" for k in range(n_sources))
    return (f"#ifndef BENCH_DECLS_H\n#define BENCH_DECLS_H\n#define PY_SSIZE_T_CLEAN\n#include <Python.h>\n"
            f'#ifdef __cplusplus\nextern "C" {{\n#endif\n{declarations}\n#ifdef __cplusplus\n}}\n#endif\n#endif\n')


def _init_text(n_sources: int) -> str:
    methods = "\n".join(f'    {{"f{k}", bench_f{k}, METH_NOARGS, NULL}},' for k in range(n_sources))
    return f"""
#define BENCH_CONCAT_(a, b) a##b
#define BENCH_CONCAT(a, b) BENCH_CONCAT_(a, b)
#define BENCH_STR_(x) #x
#define BENCH_STR(x) BENCH_STR_(x)

static PyMethodDef bench_methods[] = {{
{methods}
    {{NULL, NULL, 0, NULL}}
}};

static struct PyModuleDef bench_module = {{
    PyModuleDef_HEAD_INIT, BENCH_STR(TORCH_EXTENSION_NAME), NULL, -1, bench_methods, NULL, NULL, NULL, NULL
}};

/* PyMODINIT_FUNC declares the function extern "C" when compiled as C++. */
PyMODINIT_FUNC BENCH_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void)
{{
    return PyModule_Create(&bench_module);
}}
"""
