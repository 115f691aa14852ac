"""Building, caching and rebuilding, in this process (the build itself runs in a worker)."""

from __future__ import annotations

import json
import logging
import os
import textwrap
import time
from pathlib import Path

import pytest

from cpp_extension_tools import BuildError, cached_load_torch_cpp_extension
from tests.conftest import CompilerLog, write_module

C_ONLY = textwrap.dedent("""\
    #include <stdlib.h>
    #include <string.h>
    struct point { int x; int y; int z; };
    /* restrict, implicit void* conversion and out-of-order designated initializers: C, not C++ */
    static long sum(const int *restrict values, size_t n) {
        long total = 0;
        for (size_t i = 0; i < n; i++) total += values[i];
        return total;
    }
    long c_part(void) {
        int *buffer = malloc(4 * sizeof *buffer);
        if (buffer == NULL) return -1;
        struct point p = {.z = 3, .x = 1, .y = 2};
        memcpy(buffer, (int[]){p.x, p.y, p.z, 4}, 4 * sizeof *buffer);
        long total = sum(buffer, 4);
        free(buffer);
        return total;
    }
    """)
CPP_PART = textwrap.dedent("""\
    #include <vector>
    #include <numeric>
    extern "C" long cpp_part(void) {
        std::vector<long> v{10, 20, 30};
        return std::accumulate(v.begin(), v.end(), 0L);
    }
    """)
MIXED_INIT = textwrap.dedent("""\
    #include <Python.h>
    #define CONCAT_(a, b) a##b
    #define CONCAT(a, b) CONCAT_(a, b)
    #define STR_(x) #x
    #define STR(x) STR_(x)
    long c_part(void);
    long cpp_part(void);
    static PyObject *both(PyObject *self, PyObject *unused) {
        (void)self; (void)unused;
        return Py_BuildValue("(ll)", c_part(), cpp_part());
    }
    static PyMethodDef methods[] = {{"both", both, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}};
    static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, .m_name = STR(TORCH_EXTENSION_NAME),
                                     .m_size = -1, .m_methods = methods};
    PyMODINIT_FUNC CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&def); }
    """)


def test_c_is_compiled_as_c_and_cpp_as_cpp(tmp_path: Path, compilers: CompilerLog) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "c_only.c").write_text(C_ONLY)
    (src / "cpp_part.cpp").write_text(CPP_PART)
    (src / "init.c").write_text(MIXED_INIT)
    module = cached_load_torch_cpp_extension(
        "mixed_ext", sorted(str(p) for p in src.iterdir()), build_directory=str(tmp_path / "cache"),
        extra_cflags=["-O2", "-Wall", "-Wextra", "-Werror"])
    assert module.both() == (10, 60)
    c_compiles = compilers.compiles(".c")
    assert len(c_compiles) == 2 and all(line.startswith("cc-logged") for line in c_compiles)
    assert all("-std=gnu17" in line and "c++" not in line.split("-std=")[1][:5] for line in c_compiles)
    cpp_compiles = compilers.compiles(".cpp")
    assert len(cpp_compiles) == 1 and cpp_compiles[0].startswith("cxx-logged")


def test_second_call_returns_the_same_module_without_compiling(tmp_path: Path, compilers: CompilerLog) -> None:
    sources = write_module(tmp_path / "src")
    first = cached_load_torch_cpp_extension("memo_ext", sources, build_directory=str(tmp_path / "cache"))
    compiles = len(compilers.compiles())
    second = cached_load_torch_cpp_extension("memo_ext", sources, build_directory=str(tmp_path / "cache"))
    assert second is first
    assert len(compilers.compiles()) == compiles


def test_edit_in_process_returns_new_code_and_is_cached_for_others(tmp_path: Path, compilers: CompilerLog) -> None:
    sources = write_module(tmp_path / "src", functions={"answer": 1})
    root = str(tmp_path / "cache")
    assert cached_load_torch_cpp_extension("reload_ext", sources, build_directory=root).answer() == 1
    write_module(tmp_path / "src", functions={"answer": 2})
    assert cached_load_torch_cpp_extension("reload_ext", sources, build_directory=root).answer() == 2
    # Going back needs no compiler: the first binary is still in the store.
    write_module(tmp_path / "src", functions={"answer": 1})
    compilers.reset()
    assert cached_load_torch_cpp_extension("reload_ext", sources, build_directory=root).answer() == 1
    assert compilers.compiles() == []


def test_editing_one_source_recompiles_only_that_source(tmp_path: Path, compilers: CompilerLog) -> None:
    functions = {f"f{i}": i for i in range(4)}
    sources = write_module(tmp_path / "src", functions=functions)
    root = str(tmp_path / "cache")
    cached_load_torch_cpp_extension("incr_ext", sources, build_directory=root)
    assert len(compilers.compiles()) == 5
    compilers.reset()
    write_module(tmp_path / "src", functions={**functions, "f2": 200})
    module = cached_load_torch_cpp_extension("incr_ext", sources, build_directory=root)
    assert module.f2() == 200 and module.f3() == 3
    assert [line.split(" -c ")[1].split()[0].endswith("f2.c") for line in compilers.compiles()] == [True]
    assert len(compilers.links()) == 1


def test_branch_switch_back_compiles_nothing(tmp_path: Path, compilers: CompilerLog) -> None:
    root = str(tmp_path / "cache")
    a = {f"f{i}": i for i in range(3)}
    b = {f"f{i}": 10 * i for i in range(3)}
    sources = write_module(tmp_path / "src", functions=a)
    cached_load_torch_cpp_extension("branch_ext", sources, build_directory=root)
    write_module(tmp_path / "src", functions=b)
    assert cached_load_torch_cpp_extension("branch_ext", sources, build_directory=root).f2() == 20
    compilers.reset()
    write_module(tmp_path / "src", functions=a)  # fresh mtimes, same content as A
    assert cached_load_torch_cpp_extension("branch_ext", sources, build_directory=root).f2() == 2
    assert compilers.compiles() == [] and compilers.links() == []


def test_header_edit_rebuilds_dependents(tmp_path: Path, compilers: CompilerLog) -> None:
    root = str(tmp_path / "cache")
    src = tmp_path / "src"
    sources = write_module(src, functions={"g": 0}, header="#define VALUE 1\n")
    (src / "g.c").write_text('#include <Python.h>\n#include "shared.h"\n'
                             "PyObject *g(PyObject *s, PyObject *u) "
                             "{ (void)s; (void)u; return PyLong_FromLong(VALUE); }\n")
    assert cached_load_torch_cpp_extension("hdr_ext", sources, extra_include_paths=[str(src)],
                                           build_directory=root).g() == 1
    compilers.reset()
    (src / "shared.h").write_text("#define VALUE 2\n")
    assert cached_load_torch_cpp_extension("hdr_ext", sources, extra_include_paths=[str(src)],
                                           build_directory=root).g() == 2
    # g.c includes the header; module.c does not.
    assert [line.split(" -c ")[1].split()[0].endswith("g.c") for line in compilers.compiles()] == [True]


def test_the_compiler_probes_run_with_the_build_and_their_answers_are_recorded(tmp_path: Path,
                                                                              compilers: CompilerLog) -> None:
    # The search-path and --version probes run while the worker builds: each answer must still reach
    # the manifest and the build state. No header is read from this folder: only the probe with the
    # build's flags names it.
    searched = tmp_path / "searched only"
    searched.mkdir()
    cache = tmp_path / "cache"
    functions = {"answer": 1, "other": 2}
    cached_load_torch_cpp_extension("probed", write_module(tmp_path / "src", functions=functions),
                                    extra_include_paths=[str(searched)], build_directory=str(cache))
    probes = [line for line in compilers.calls() if " -E -v " in line]
    assert len(probes) == 2 and sum(f"-I{searched}" in line for line in probes) == 1
    (artifact,) = (cache / "probed" / "artifacts").iterdir()
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert str(searched) in [folder["path"] for folder in manifest["folders"]]
    versions = manifest["details"]["compiler_versions"]
    assert set(versions) == {"cc", "cxx"} and "unknown" not in versions.values()
    (build_folder,) = (cache / "probed" / "builds").iterdir()
    builtin = json.loads((build_folder / "cpp_extension_tools_state.json").read_text())["builtin_search"]
    assert set(builtin) == {"builtin:c"} and builtin["builtin:c"]

    compilers.reset()  # a rebuild by the same compilers probes only with the build's flags
    functions["answer"] = 3
    module = cached_load_torch_cpp_extension("probed", write_module(tmp_path / "src", functions=functions),
                                             extra_include_paths=[str(searched)], build_directory=str(cache))
    assert module.answer() == 3
    probes = [line for line in compilers.calls() if " -E -v " in line]
    assert len(probes) == 1 and f"-I{searched}" in probes[0]
    assert not [line for line in compilers.calls() if line.endswith(" --version")]
    again = json.loads((build_folder / "cpp_extension_tools_state.json").read_text())["builtin_search"]
    assert again == builtin
    manifests = [json.loads((a / "manifest.json").read_text()) for a in (cache / "probed" / "artifacts").iterdir()]
    assert all(str(searched) in [f["path"] for f in m["folders"]] for m in manifests)


def test_stale_object_with_older_mtime_is_rebuilt(tmp_path: Path, compilers: CompilerLog) -> None:
    """ninja trusts timestamps; content decides here (a restored file can carry an old mtime)."""
    root = str(tmp_path / "cache")
    sources = write_module(tmp_path / "src", functions={"answer": 1})
    cached_load_torch_cpp_extension("mtime_ext", sources, build_directory=root)
    answer = tmp_path / "src" / "answer.c"
    old = answer.stat().st_mtime_ns - 3_600_000_000_000
    write_module(tmp_path / "src", functions={"answer": 7})
    os.utime(answer, ns=(old, old))
    assert cached_load_torch_cpp_extension("mtime_ext", sources, build_directory=root).answer() == 7


@pytest.mark.parametrize("change", ["flags", "torch", "python_abi", "cpu_with_native", "compiler"])
def test_configuration_changes_rebuild(tmp_path: Path, compilers: CompilerLog, monkeypatch: pytest.MonkeyPatch,
                                       change: str) -> None:
    root = str(tmp_path / "cache")
    sources = write_module(tmp_path / "src")
    flags = ["-O2", "-march=native"]
    cached_load_torch_cpp_extension("key_ext", sources, extra_cflags=flags, build_directory=root)
    compilers.reset()
    if change == "flags":
        flags = ["-O1", "-march=native"]
    elif change == "torch":
        monkeypatch.setenv("CACHED_CPP_EXTENSION_TORCH_IDENTITY", "posed-2.99")
    elif change == "python_abi":
        monkeypatch.setenv("CACHED_CPP_EXTENSION_PYTHON_IDENTITY", "cpython-3.99")
    elif change == "cpu_with_native":
        monkeypatch.setenv("CACHED_CPP_EXTENSION_CPU_FINGERPRINT", "another-cpu")
    elif change == "compiler":
        other = tmp_path / "compilers" / "cc-other"
        other.write_text((tmp_path / "compilers" / "cc-logged").read_text())
        other.chmod(0o755)
        monkeypatch.setenv("CC", str(other))
    cached_load_torch_cpp_extension("key_ext", sources, extra_cflags=flags, build_directory=root)
    assert len(compilers.compiles()) >= 1


def test_cpu_is_not_in_the_key_without_native_flags(tmp_path: Path, compilers: CompilerLog,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(tmp_path / "cache")
    sources = write_module(tmp_path / "src")
    cached_load_torch_cpp_extension("portable_ext", sources, extra_cflags=["-O2"], build_directory=root)
    compilers.reset()
    monkeypatch.setenv("CACHED_CPP_EXTENSION_CPU_FINGERPRINT", "another-cpu")
    from cpp_extension_tools import _loader

    monkeypatch.setattr(_loader, "_memo", {})
    cached_load_torch_cpp_extension("portable_ext", sources, extra_cflags=["-O2"], build_directory=root)
    assert compilers.compiles() == []


def test_compile_error_names_file_and_line_and_publishes_nothing(tmp_path: Path, compilers: CompilerLog) -> None:
    root = tmp_path / "cache"
    sources = write_module(tmp_path / "src")
    broken = tmp_path / "src" / "answer.c"
    good = broken.read_text()
    broken.write_text(good + "\nint broken(void) { return undeclared_symbol; }\n")
    with pytest.raises(BuildError) as info:
        cached_load_torch_cpp_extension("err_ext", sources, build_directory=str(root))
    error = info.value
    assert f"{broken}:4:" in str(error) and "undeclared_symbol" in str(error)
    assert Path(error.log_path).is_file() and error.log_path in str(error)
    assert error.name == "err_ext" and "answer.c" in error.compiler_output
    assert not list(root.glob("err_ext/artifacts/*/manifest.json"))
    broken.write_text(good)
    assert cached_load_torch_cpp_extension("err_ext", sources, build_directory=str(root)).answer() == 42


def test_link_error_is_a_build_error(tmp_path: Path, compilers: CompilerLog) -> None:
    sources = write_module(tmp_path / "src")
    with pytest.raises(BuildError, match="nonexistent_library_xyz"):
        cached_load_torch_cpp_extension("link_ext", sources, extra_ldflags=["-lnonexistent_library_xyz"],
                                        build_directory=str(tmp_path / "cache"))


def test_logging_quiet_and_verbose(tmp_path: Path, compilers: CompilerLog, caplog: pytest.LogCaptureFixture) -> None:
    sources = write_module(tmp_path / "src")
    caplog.set_level(logging.INFO, logger="cpp_extension_tools")
    cached_load_torch_cpp_extension("log_ext", sources, build_directory=str(tmp_path / "cache"))
    quiet = [r.getMessage() for r in caplog.records if r.name == "cpp_extension_tools"]
    assert len(quiet) == 2 and quiet[0].startswith("building log_ext") and quiet[1].startswith("built log_ext in")
    caplog.clear()
    write_module(tmp_path / "src", functions={"answer": 43})
    cached_load_torch_cpp_extension("log_ext", sources, build_directory=str(tmp_path / "cache"), verbose=True)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "cache root" in text and str(tmp_path / "cache") in text
    assert "cache miss" in text and "answer.c changed" in text
    assert "[1/2]" in text or "[1/3]" in text  # ninja progress


def test_cpu_only_torch_rejects_cuda_sources_clearly(tmp_path: Path) -> None:
    import torch

    if torch.version.cuda is not None:
        pytest.skip("this torch has CUDA")
    kernel = tmp_path / "k.cu"
    kernel.write_text("__global__ void k() {}\n")
    with pytest.raises(BuildError, match="CPU-only build"):
        cached_load_torch_cpp_extension("cuda_ext", [str(kernel)], build_directory=str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


def test_warm_lookup_does_not_hash_unchanged_files(tmp_path: Path, compilers: CompilerLog,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sources = write_module(tmp_path / "src", functions={f"f{i}": i for i in range(3)})
    root = str(tmp_path / "cache")
    cached_load_torch_cpp_extension("hash_ext", sources, build_directory=root)
    time.sleep(0.15)
    from cpp_extension_tools import _loader
    from cpp_extension_tools._cache import hashing as _hashing
    from cpp_extension_tools._cache import store as _store

    monkeypatch.setattr(_loader, "_memo", {})
    hashed: list[str] = []
    real = _hashing.digest_file

    def counting(path: str) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(_hashing, "digest_file", counting)
    monkeypatch.setattr(_store, "digest_file", counting)
    cached_load_torch_cpp_extension("hash_ext", sources, build_directory=root)
    assert hashed == []
    os.utime(sources[0])  # touched, same content: hashed once, no rebuild
    compilers.reset()
    monkeypatch.setattr(_loader, "_memo", {})
    cached_load_torch_cpp_extension("hash_ext", sources, build_directory=root)
    assert hashed == [sources[0]] and compilers.compiles() == []
