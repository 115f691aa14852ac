"""The CUDA path: a module with a .cu source compiles and links (nothing runs it without a GPU)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from cpp_extension_tools import cached_load_torch_cpp_extension  # noqa: E402
from cpp_extension_tools._env import cuda as _cuda  # noqa: E402

pytestmark = [
    pytest.mark.cuda_build,
    pytest.mark.skipif(torch.version.cuda is None, reason="CPU-only torch"),
    pytest.mark.skipif(_cuda.find_nvcc() is None, reason="no nvcc"),
]

KERNEL = textwrap.dedent("""\
    #include <cuda_runtime.h>
    __global__ void add_one(float *x, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) x[i] += 1.0f;
    }
    extern "C" int launch_add_one(float *x, int n, void *stream) {
        add_one<<<(n + 255) / 256, 256, 0, (cudaStream_t)stream>>>(x, n);
        return (int)cudaGetLastError();
    }
    """)
MODULE = textwrap.dedent("""\
    #include <Python.h>
    #define CONCAT_(a, b) a##b
    #define CONCAT(a, b) CONCAT_(a, b)
    #define STR_(x) #x
    #define STR(x) STR_(x)
    int launch_add_one(float *x, int n, void *stream);
    static PyObject *launcher(PyObject *self, PyObject *unused) {
        (void)self; (void)unused;
        return PyLong_FromVoidPtr((void *)launch_add_one);
    }
    static PyMethodDef methods[] = {{"launcher", launcher, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}};
    static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, .m_name = STR(TORCH_EXTENSION_NAME),
                                     .m_size = -1, .m_methods = methods};
    PyMODINIT_FUNC CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&def); }
    """)


def test_c_and_cuda_module_compiles_links_and_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    (tmp_path / "module.c").write_text(MODULE)
    (tmp_path / "kernel.cu").write_text(KERNEL)
    module = cached_load_torch_cpp_extension(
        "cuda_ext", [str(tmp_path / "module.c"), str(tmp_path / "kernel.cu")],
        build_directory=str(tmp_path / "cache"))
    assert module.launcher() != 0
    ninja = next((tmp_path / "cache" / "cuda_ext" / "builds").iterdir()) / "build.ninja"
    text = ninja.read_text()
    # The default CUDA flags pass -march=native to the host compiler; the device archs must survive that.
    for flag in ("-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
                 "-gencode=arch=compute_90,code=compute_90", "-Xcompiler -march=native"):
        assert flag in text
    manifest = next((tmp_path / "cache" / "cuda_ext" / "artifacts").glob("*/manifest.json")).read_text()
    assert '"cuda_arch_list": "8.0;9.0+PTX"' in manifest


def test_arch_list_change_rebuilds_the_cuda_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The log and the wrapper live outside the sources' folder: a file created there during a build
    # would (rightly) cost a rebuild, since it could be a header the compiler now finds.
    (tmp_path / "tools").mkdir()
    nvcc_log = tmp_path / "tools" / "nvcc.log"
    wrapper = tmp_path / "tools" / "nvcc-logged"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {nvcc_log}\nexec {_cuda.find_nvcc()} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PYTORCH_NVCC", str(wrapper))
    (tmp_path / "module.c").write_text(MODULE)
    (tmp_path / "kernel.cu").write_text(KERNEL)
    sources = [str(tmp_path / "module.c"), str(tmp_path / "kernel.cu")]
    root = str(tmp_path / "cache")

    def nvcc_compiles() -> int:
        return sum(" -c " in f" {line} " for line in nvcc_log.read_text().splitlines()) if nvcc_log.exists() else 0

    for arch, expected in (("8.0", 1), ("9.0", 2), ("8.0", 2)):  # the return to 8.0 is a cache hit
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", arch)
        cached_load_torch_cpp_extension("arch_ext", sources, build_directory=root)
        assert nvcc_compiles() == expected, arch
    assert len(list((tmp_path / "cache" / "arch_ext" / "artifacts").iterdir())) == 2


def test_cuda_home_is_a_real_toolkit() -> None:
    home = _cuda.find_cuda_home()
    assert home is not None
    assert Path(home, "bin", "nvcc").exists()
    assert any(Path(home, lib, "libcudart.so").exists() for lib in ("lib64", "lib"))


def test_example_package_builds_its_cuda_kernel(tmp_path: Path) -> None:
    """With a CUDA torch and nvcc the package compiles hash_ids_cuda.cu; nothing runs it without a GPU."""
    from tests.conftest import last_json, run_python

    result = run_python("""
        import json, torch, example_package as ep
        print(json.dumps([ep.NO_CUDA_REASON, ep._extension.has_cuda(), ep.hash_ids(torch.arange(4), 10).tolist()]))
        """, env={"CACHED_CPP_EXTENSION_BUILD_DIR": str(tmp_path / "cache")}, cwd=tmp_path)
    reason, has_cuda, cpu_result = last_json(result.stdout)  # type: ignore[misc]
    assert reason is None and has_cuda is True
    assert len(cpu_result) == 4
