"""The drop-ins for torch's JIT API: cached_load_inline, load/load_inline of patch_torch(), and their defaults.

The builds here are of small C++ sources without torch's headers (a second or two each); the torch
ones are in test_torch_jit_parity.py.
"""

from __future__ import annotations

import inspect
import os
import textwrap
from pathlib import Path

import pytest
import torch.utils.cpp_extension as torch_cpp

import cpp_extension_tools
from cpp_extension_tools import _inline, _torch_compat
from tests.conftest import CompilerLog, run_python

# A module without torch's headers: fast to build, still C++ (main.cpp), still named by TORCH_EXTENSION_NAME.
PLAIN_MODULE = textwrap.dedent("""\
    #include <Python.h>
    #define CONCAT_(a, b) a##b
    #define CONCAT(a, b) CONCAT_(a, b)
    #define STR_(x) #x
    #define STR(x) STR_(x)
    static PyObject *answer(PyObject *, PyObject *) { return PyLong_FromLong(VALUE); }
    static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, nullptr}, {nullptr, nullptr, 0, nullptr}};
    static PyModuleDef def = {PyModuleDef_HEAD_INIT, STR(TORCH_EXTENSION_NAME), nullptr, -1, methods};
    PyMODINIT_FUNC CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&def); }
    """)


def plain_source(value: int) -> str:
    return f"#define VALUE {value}\n" + PLAIN_MODULE


def _parameters(function: object) -> list[tuple[str, object, object]]:
    # Names, kinds and defaults: torch annotates some parameters, the drop-ins all (mypy strict).
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _unpatched() -> object:
    yield
    assert torch_cpp.load.__module__ == "torch.utils.cpp_extension", "a test left torch patched"


def test_the_drop_ins_take_torchs_exact_signatures() -> None:
    assert _parameters(_torch_compat.load) == _parameters(torch_cpp.load)
    assert _parameters(_torch_compat.load_inline) == _parameters(torch_cpp.load_inline)


def test_cached_load_inline_takes_torchs_arguments_in_torchs_order_then_prebuilt_path() -> None:
    ours = _parameters(cpp_extension_tools.cached_load_inline)
    torchs = [p for p in _parameters(torch_cpp.load_inline) if "sycl" not in p[0]]
    assert ours[:len(torchs)] == torchs
    assert [p[0] for p in ours[len(torchs):]] == ["sycl_sources", "extra_sycl_cflags", "with_sycl", "prebuilt_path"]
    assert all(p[1] is inspect.Parameter.KEYWORD_ONLY for p in ours[len(torchs):])


def test_the_drop_ins_are_not_imported_by_the_package() -> None:
    result = run_python("""
        import sys, cpp_extension_tools
        print(sorted(m for m in sys.modules if m.endswith(("_inline", "_torch_compat"))))
        print(cpp_extension_tools.patch_torch.__module__, cpp_extension_tools.cached_load_inline.__module__)
    """)
    lines = result.stdout.splitlines()
    assert lines[0] == "[]"
    assert lines[1] == "cpp_extension_tools._torch_compat cpp_extension_tools._inline"


def test_patch_torch_replaces_the_module_functions_and_undo_restores_them() -> None:
    original_load, original_inline = torch_cpp.load, torch_cpp.load_inline
    handle = cpp_extension_tools.patch_torch()
    try:
        from torch.utils.cpp_extension import load, load_inline

        assert load is _torch_compat.load and load_inline is _torch_compat.load_inline
        assert original_load is not load  # a name imported before the patch keeps torch's function
    finally:
        handle.undo()
    assert torch_cpp.load is original_load and torch_cpp.load_inline is original_inline
    handle.undo()  # twice: harmless
    assert torch_cpp.load is original_load


def test_patch_torch_twice_and_nested_blocks_restore_only_when_the_last_is_undone() -> None:
    original = torch_cpp.load
    with cpp_extension_tools.patch_torch():
        with cpp_extension_tools.patch_torch() as inner:
            assert torch_cpp.load is _torch_compat.load
        assert inner is not None
        assert torch_cpp.load is _torch_compat.load  # the outer block still holds its patch
    assert torch_cpp.load is original


@pytest.mark.parametrize(("call", "named"), [
    (lambda: _torch_compat.load("m", ["x.cpp"], with_sycl=True), "with_sycl"),
    (lambda: _torch_compat.load("m", ["x.cpp"], extra_sycl_cflags=["-O2"]), "extra_sycl_cflags"),
    (lambda: _torch_compat.load_inline("m", "", sycl_sources="void f() {}"), "sycl_sources"),
    (lambda: cpp_extension_tools.cached_load_inline("m", "", with_sycl=True), "with_sycl"),
])
def test_what_the_drop_ins_cannot_honour_raises_naming_it(call: object, named: str) -> None:
    with pytest.raises(NotImplementedError, match=named):
        call()  # type: ignore[operator]


def test_functions_of_a_wrong_type_raise_torchs_value_error(cache_root: Path) -> None:
    with pytest.raises(ValueError, match="Expected 'functions' to be a list or dict"):
        cpp_extension_tools.cached_load_inline("invalid_jit_extension", cpp_sources="", functions=5)
    assert not cache_root.exists()  # nothing written for a bad argument


def test_generated_sources_are_torchs() -> None:
    cpp = ["int f();", "int g();"]
    files = _inline.generated_sources(cpp, "__global__ void k() {}", {"f": "doc of f"}, True, False)
    assert files == [
        ("main.cpp", "#include <torch/extension.h>\nint f();\nint g();\nPYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {\n"
                     'm.def("f", torch::wrap_pybind_function(f), "doc of f");\n}'),
        ("cuda.cu", "#include <torch/types.h>\n#include <cuda.h>\n#include <cuda_runtime.h>\n__global__ void k() {}"),
    ]
    assert cpp == ["int f();", "int g();"]  # the caller's list is not changed (torch's is)
    [(_, text)] = _inline.generated_sources("int f();", None, "f", False, True)
    assert text == 'int f();\nPYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {\nm.def("f", f, "f");\n}'


def test_an_inline_module_is_built_once_then_loaded_by_a_fresh_process(compilers: CompilerLog,
                                                                       cache_root: Path) -> None:
    module = cpp_extension_tools.cached_load_inline("inline_plain", plain_source(7), no_implicit_headers=True)
    assert module.answer() == 7
    assert len(compilers.compiles()) == 1
    [generated] = cache_root.glob("inline_plain/inline/*/main.cpp")
    assert generated.read_text() == plain_source(7)
    result = run_python(f"""
        import cpp_extension_tools
        print(cpp_extension_tools.cached_load_inline("inline_plain", {plain_source(7)!r}, no_implicit_headers=True)
              .answer())
    """)
    assert result.stdout.strip() == "7"
    assert len(compilers.compiles()) == 1  # the fresh process compiled nothing
    assert generated.stat().st_mtime_ns == next(cache_root.glob("inline_plain/inline/*/main.cpp")).stat().st_mtime_ns


def test_a_changed_source_string_is_a_new_file_and_a_new_build(compilers: CompilerLog, cache_root: Path) -> None:
    cpp_extension_tools.cached_load_inline("inline_changed", plain_source(1), no_implicit_headers=True)
    result = run_python(f"""
        import cpp_extension_tools
        print(cpp_extension_tools.cached_load_inline("inline_changed", {plain_source(2)!r},
                                                     no_implicit_headers=True).answer())
    """)
    assert result.stdout.strip() == "2"
    assert len(compilers.compiles()) == 2
    assert len(list(cache_root.glob("inline_changed/inline/*/main.cpp"))) == 2


def test_a_damaged_generated_source_is_written_again(compilers: CompilerLog, cache_root: Path) -> None:
    cpp_extension_tools.cached_load_inline("inline_damaged", plain_source(3), no_implicit_headers=True)
    [generated] = cache_root.glob("inline_damaged/inline/*/main.cpp")
    generated.write_text("truncated")
    result = run_python(f"""
        import cpp_extension_tools
        print(cpp_extension_tools.cached_load_inline("inline_damaged", {plain_source(3)!r},
                                                     no_implicit_headers=True).answer())
    """)
    assert result.stdout.strip() == "3"
    assert generated.read_text() == plain_source(3)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_generated_source_of_the_right_size_owned_by_another_user_is_written_again(
        compilers: CompilerLog, cache_root: Path) -> None:
    """Another user's file in its place (same size, other code) is never compiled: the call writes its own."""
    cpp_extension_tools.cached_load_inline("inline_foreign", plain_source(4), no_implicit_headers=True)
    [generated] = cache_root.glob("inline_foreign/inline/*/main.cpp")
    generated.write_text(plain_source(9))  # same length, other value
    os.chown(generated, 65534, 65534)
    result = run_python(f"""
        import cpp_extension_tools
        print(cpp_extension_tools.cached_load_inline("inline_foreign", {plain_source(4)!r},
                                                     no_implicit_headers=True).answer())
    """)
    assert result.stdout.strip() == "4"
    assert generated.read_text() == plain_source(4) and generated.stat().st_uid == os.geteuid()


def test_the_drop_in_keeps_torchs_defaults_and_order(compilers: CompilerLog, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "plain.cpp"
    source.write_text(plain_source(5))
    include = tmp_path / "inc"
    include.mkdir()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))
    with pytest.warns(UserWarning, match="no such directory"):
        # torch's positional order: extra_cflags, extra_cuda_cflags, extra_sycl_cflags, extra_ldflags,
        # extra_include_paths; a flag with spaces and surrounding whitespace, as torch's own test passes them.
        module = _torch_compat.load("dropin_plain", [str(source)], ["-g\n\n", "-O0 -DEXTRA=1"], None, None, None,
                                    [f"  {include}\n", str(tmp_path / "missing")])
    assert isinstance(module, type(os)) and module.answer() == 5
    [compile_line] = compilers.compiles()
    words = compile_line.split()
    assert {"-g", "-O0", "-DEXTRA=1", f"-I{include}"} <= set(words)  # stripped, split as torch's shell splits
    assert not any("missing" in word for word in words)
    assert "-march=native" not in words and "-O3" not in words  # extra_cflags=None/[...] adds none of ours
    assert (tmp_path / "torch_extensions" / "dropin_plain").is_dir()  # torch's extensions root is the cache root


def test_the_drop_in_cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    default = _torch_compat.torch_cache_root(None)
    assert default is not None and default.startswith(os.path.realpath(tmp_path / "xdg" / "torch_extensions"))
    assert os.path.basename(default).startswith("py")  # torch's per-Python, per-accelerator folder
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_ext"))
    assert _torch_compat.torch_cache_root(None) == str(tmp_path / "torch_ext")
    assert _torch_compat.torch_cache_root(tmp_path / "mine") == str(tmp_path / "mine")
    monkeypatch.setenv("CACHED_CPP_EXTENSION_BUILD_DIR", str(tmp_path / "ours"))
    assert _torch_compat.torch_cache_root(None) is None  # the library's own setting wins: native resolution


def test_a_drop_in_warm_call_in_a_patched_fresh_process_compiles_nothing(compilers: CompilerLog,
                                                                         tmp_path: Path) -> None:
    source = tmp_path / "plain.cpp"
    source.write_text(plain_source(9))
    code = f"""
        import cpp_extension_tools
        cpp_extension_tools.patch_torch()
        from torch.utils.cpp_extension import load
        print(load("patched_plain", {str(source)!r}, build_directory={str(tmp_path / 'root')!r}).answer())
    """
    assert run_python(code).stdout.strip() == "9"
    assert run_python(code).stdout.strip() == "9"
    [compile_line] = compilers.compiles()
    assert "-march=native" not in compile_line.split()  # extra_cflags=None: torch's meaning, no flags of ours
