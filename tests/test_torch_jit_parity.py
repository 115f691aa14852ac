"""PyTorch's own test/test_cpp_extensions_jit.py, as this project's tests: each behaviour it checks that applies
here, through the drop-ins of patch_torch() and through cached_load_inline.

The builds include torch's headers (20-60 s each on a small machine), so each module is built once per
session in one shared cache root and several of torch's tests share it; they are all marked slow.
With PARITY_WITH_TORCH=1 the same tests also run against torch's own load/load_inline, in the same process;
PARITY_IMPLEMENTATIONS=torch runs torch's side alone, in a process that loads none of the drop-in's builds (the
reference column of docs/torch-compat.md: pybind11 registers a bound C++ class once per process, so sharing
one with the drop-in's builds fails torch's imports). PARITY_ROOT=FOLDER keeps the cache between runs.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.utils.cpp_extension as torch_cpp

import cpp_extension_tools
from cpp_extension_tools import _torch_compat
from cpp_extension_tools._errors import BuildError

pytestmark = pytest.mark.slow

SOURCES = Path(__file__).resolve().parent / "torch_jit_sources"
IMPLEMENTATIONS = (os.environ["PARITY_IMPLEMENTATIONS"].split(",") if os.environ.get("PARITY_IMPLEMENTATIONS") else
                   ["drop_in", *(["torch"] if os.environ.get("PARITY_WITH_TORCH") == "1" else [])])
if not IMPLEMENTATIONS or not set(IMPLEMENTATIONS) <= {"drop_in", "torch"}:
    raise ValueError(f"PARITY_IMPLEMENTATIONS: a comma-separated list of drop_in and torch, not {IMPLEMENTATIONS}")


@dataclass(frozen=True)
class Jit:
    """One implementation of torch's JIT API: the drop-ins, or torch's own functions."""

    label: str
    load: Callable[..., Any]
    load_inline: Callable[..., Any]

    def name(self, base: str) -> str:
        # torch's and ours in one process: a module name each (pybind11 keeps one module per name)
        return f"{base}_{self.label}"


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def jit(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jit]:
    # PARITY_ROOT keeps the builds between runs while working on these tests.
    kept = os.environ.get("PARITY_ROOT")
    root = Path(kept, request.param) if kept else tmp_path_factory.mktemp(f"torch_extensions_{request.param}")
    with pytest.MonkeyPatch.context() as patch:
        # Both take TORCH_EXTENSIONS_DIR as their root; the library's own setting would win for the drop-ins.
        patch.setenv("TORCH_EXTENSIONS_DIR", str(root))
        patch.delenv("CACHED_CPP_EXTENSION_BUILD_DIR", raising=False)
        patch.chdir(SOURCES)  # torch's test runs from its folder: relative source and include paths
        if request.param == "torch":
            yield Jit("torch", torch_cpp.load, torch_cpp.load_inline)
        else:
            yield Jit("drop_in", _torch_compat.load, _torch_compat.load_inline)


@pytest.fixture(autouse=True)
def _in_sources_folder(monkeypatch: pytest.MonkeyPatch, jit: Jit) -> None:
    monkeypatch.chdir(SOURCES)


@pytest.fixture(scope="module")
def jit_extension(jit: Jit) -> ModuleType:
    """test_jit_compile_extension's call, as torch writes it (relative paths, odd include folders, -g)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the drop-in warns about missing include folders; none is missing here
        module: ModuleType = jit.load(
            name=jit.name("jit_extension"), sources=["jit_extension.cpp", "jit_extension2.cpp"],
            extra_include_paths=["include", "path / with spaces in it", "path with quote'"],
            extra_cflags=["-g"], verbose=True)
    return module


# The functions of several of torch's load_inline tests, in one module (one build instead of six).
INLINE_SOURCE = """
torch::Tensor tanh_add(torch::Tensor x, torch::Tensor y) { return x.tanh() + y.tanh(); }
torch::Tensor get() { return torch::empty({}); }
at::Tensor warn_cos(at::Tensor x) {
  TORCH_WARN("Warning from ", x.toString());
  return x.cos();
}
void run_back(at::Tensor x) { x.backward({}); }
void run_back_no_gil(at::Tensor x) {
  pybind11::gil_scoped_release no_gil;
  x.backward({});
}
"""
INLINE_FUNCTIONS = {"tanh_add": "Tanh and then sum :D", "get": "get", "warn_cos": "warn_cos",
                    "run_back": "run_back", "run_back_no_gil": "run_back_no_gil"}


@pytest.fixture(scope="module")
def inline_extension(jit: Jit) -> ModuleType:
    module: ModuleType = jit.load_inline(name=jit.name("inline_jit_extension"), cpp_sources=INLINE_SOURCE,
                                         functions=INLINE_FUNCTIONS, verbose=True, use_pch=jit.label == "drop_in")
    return module


# -- test_jit_compile_extension, and the cpp frontend and functorch tests on the same module ------------------


def test_jit_compile_extension(jit_extension: ModuleType) -> None:
    x, y = torch.randn(4, 4), torch.randn(4, 4)
    assert torch.equal(jit_extension.tanh_add(x, y), x.tanh() + y.tanh())
    assert torch.allclose(jit_extension.exp_add(x, y), x.exp() + y.exp())  # defined in the second file
    doubler = jit_extension.Doubler(2, 2)
    assert doubler.get().grad is None
    assert doubler.get().sum() == 4 and doubler.forward().sum() == 8


def test_cpp_frontend_module_has_same_output_as_python(jit_extension: ModuleType) -> None:
    cpp_linear = jit_extension.Net(5, 2)
    cpp_linear.to(torch.double)  # the bound module's to() returns None
    python_linear = torch.nn.Linear(5, 2).to(torch.double)
    parameters = dict(cpp_linear.named_parameters())
    with torch.no_grad():
        python_linear.weight.copy_(parameters["fc.weight"])
        python_linear.bias.copy_(parameters["fc.bias"])
    x = torch.randn(2, 5, dtype=torch.double)
    cpp_output, python_output = cpp_linear.forward(x), python_linear(x)
    assert torch.allclose(cpp_output, python_output)
    cpp_output.sum().backward()
    python_output.sum().backward()
    assert torch.allclose(parameters["fc.weight"].grad, python_linear.weight.grad)
    assert torch.allclose(parameters["fc.bias"].grad, python_linear.bias.grad)


def test_cpp_frontend_module_python_inter_op(jit_extension: ModuleType) -> None:
    net = jit_extension.Net(5, 2)
    assert str(net) == "Net"
    sequential = torch.nn.Sequential(jit_extension.Net(3, 5), torch.nn.Tanh(), net, torch.nn.Sigmoid())
    output = sequential(torch.randn(2, 3))
    assert list(output.shape) == [2, 2]
    assert len(list(sequential.parameters())) == len(net.parameters()) * 2
    for parameter in net.parameters():
        assert parameter.grad is None
    output.sum().backward()
    assert all(parameter.grad is not None for parameter in net.parameters())
    net.zero_grad()
    assert all(parameter.grad is None for parameter in net.parameters())
    net.eval()
    assert not net.training
    bias = net.get_bias().clone()
    net.set_bias(bias + 1)
    assert torch.equal(net.get_bias(), bias + 1)
    assert len(net.named_buffers()) == 1 and torch.equal(net.named_buffers()[0][1], torch.eye(5))


def test_cpp_frontend_module_has_up_to_date_attributes(jit_extension: ModuleType) -> None:
    net = jit_extension.Net(5, 2)
    assert len(net._parameters) == 0
    net.add_new_parameter("foo", torch.eye(5))
    assert len(net._parameters) == 1
    assert len(net._buffers) == 1
    net.add_new_buffer("bar", torch.eye(5))
    assert len(net._buffers) == 2
    assert len(net._modules) == 1
    net.add_new_submodule("fc2")
    assert len(net._modules) == 2


def test_custom_functorch_error(jit_extension: ModuleType) -> None:
    t = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"cannot use C\+\+ torch::autograd::Function with functorch"):
        torch.func.vmap(jit_extension.identity)(t)


def test_warning_without_pytorch_error_handling_is_not_caught(jit_extension: ModuleType) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jit_extension.warn_cos_unhandled(torch.rand(2).double())
    assert caught == []


# -- the load_inline tests, on the shared inline module ----------------------------------------------------


def test_inline_jit_compile_extension_with_functions_as_dict(inline_extension: ModuleType) -> None:
    assert inline_extension.tanh_add.__doc__.split("\n")[2] == "Tanh and then sum :D"
    assert inline_extension.get.__doc__.split("\n")[2] == "get"  # a list's docstrings are the names
    x, y = torch.randn(4, 4), torch.randn(4, 4)
    assert torch.equal(inline_extension.tanh_add(x, y), x.tanh() + y.tanh())


def test_set_default_type_also_changes_aten_default_type(inline_extension: ModuleType) -> None:
    initial = torch.get_default_dtype()
    try:
        for dtype in (torch.float64, torch.float32, torch.float16):
            torch.set_default_dtype(dtype)
            assert inline_extension.get().dtype == dtype
    finally:
        torch.set_default_dtype(initial)


def test_warning_with_pytorch_error_handling(inline_extension: ModuleType) -> None:
    t = torch.rand(2).double()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inline_extension.warn_cos(t)
    assert len(caught) == 1 and "Warning from" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="Warning from"):
            inline_extension.warn_cos(t)


def test_autograd_from_cpp(inline_extension: ModuleType) -> None:
    class MyFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            return x.clone()

        @staticmethod
        def backward(ctx: Any, gx: torch.Tensor) -> torch.Tensor:
            return gx

    loss = MyFn.apply(torch.rand(20, requires_grad=True)).sum()
    with pytest.raises(RuntimeError, match="The autograd engine was called while holding the GIL"):
        inline_extension.run_back(loss)
    inline_extension.run_back_no_gil(MyFn.apply(torch.rand(20, requires_grad=True)).sum())


def test_gen_extension_h_pch_writes_nothing_into_torchs_folder(jit: Jit, inline_extension: ModuleType) -> None:
    # Intended difference: torch's use_pch=True writes extension.h.gch into site-packages; the drop-in never does.
    precompiled = Path(torch_cpp._TORCH_PATH, "include", "torch", "extension.h.gch")
    if jit.label == "torch":
        pytest.skip("torch's own use_pch writes into its install folder (not used by the reference run)")
    assert not precompiled.exists()


def test_inline_jit_compile_extension_multiple_sources_and_lenient_flags(jit: Jit) -> None:
    # test_inline_jit_compile_extension_multiple_sources_and_no_functions and
    # test_lenient_flag_handling_in_jit_extensions, in one build.
    first = "torch::Tensor sin_add(torch::Tensor x, torch::Tensor y) { return x.sin() + y.sin(); }"
    second = """
        #include <torch/extension.h>
        torch::Tensor sin_add(torch::Tensor x, torch::Tensor y);
        PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("sin_add", &sin_add, "sin(x) + sin(y)"); }
    """
    module = jit.load_inline(name=jit.name("inline_jit_extension_lenient"), cpp_sources=[first, second],
                             extra_cflags=["-g\n\n", "-O0 -Wall"], extra_include_paths=["       include\n"],
                             verbose=True)
    x, y = torch.randn(4, 4), torch.randn(4, 4)
    assert torch.equal(module.sin_add(x, y), x.sin() + y.sin())


def test_inline_jit_compile_extension_throws_when_functions_is_bad(jit: Jit) -> None:
    with pytest.raises(ValueError):
        jit.load_inline(name=jit.name("invalid_jit_extension"), cpp_sources="", functions=5)


def test_returns_shared_library_path_when_is_python_module_is_false(jit: Jit) -> None:
    # test_returns_shared_library_path_when_is_python_module_is_true and test_custom_compound_op_autograd
    source = f"""
        #include <torch/script.h>
        #include <torch/library.h>
        torch::Tensor func(torch::Tensor x) {{ return x; }}
        torch::Tensor my_add(torch::Tensor x, torch::Tensor y) {{ return x + y; }}
        static torch::RegisterOperators registry("test_{jit.label}::func", &func);
        TORCH_LIBRARY(my_{jit.label}, m) {{ m.def("add", &my_add); }}
    """
    path = jit.load_inline(name=jit.name("is_python_module"), cpp_sources=source, functions="func", verbose=True,
                           is_python_module=False)
    assert isinstance(path, str) and os.path.isfile(path)
    assert torch.equal(getattr(torch.ops, f"test_{jit.label}").func(torch.eye(5)), torch.eye(5))
    a, b = torch.randn(5, 5, requires_grad=True), torch.randn(5, 5, requires_grad=True)
    add = getattr(torch.ops, f"my_{jit.label}").add
    for fast_mode in (True, False):
        assert torch.autograd.gradcheck(add, [a, b], eps=1e-2, fast_mode=fast_mode)


def test_compilation_error_formatting(jit: Jit) -> None:
    with pytest.raises(RuntimeError) as caught:
        jit.load_inline(name=jit.name("test_compilation_error_formatting"), cpp_sources="int main() { return 0 }")
    message = str(caught.value)
    assert "\\n" not in message and "\\r" not in message  # line breaks kept, not escaped into one line
    if jit.label == "drop_in":
        assert isinstance(caught.value, BuildError)
        # gcc quotes with the locale's quotation marks (ASCII or typographic)
        assert re.search(r"expected .;. before", message) and os.path.isfile(caught.value.log_path)


def test_reload_jit_extension(jit: Jit) -> None:
    def compile(code: str) -> ModuleType:
        module: ModuleType = jit.load_inline(name=jit.name("reloaded_jit_extension"), cpp_sources=code,
                                             functions="f", verbose=True)
        return module

    assert compile("int f() { return 123; }").f() == 123
    assert compile("int f() { return 456; }").f() == 456
    assert compile("int f() { return 456; }").f() == 456
    assert compile("int f() { return 789; }").f() == 789


def test_cached_load_inline_shares_the_drop_ins_cache(jit: Jit, inline_extension: ModuleType) -> None:
    if jit.label == "torch":
        pytest.skip("cached_load_inline has no torch counterpart beyond load_inline")
    # The native entry point with the drop-in's arguments (torch's flags: none) finds the drop-in's build.
    module = cpp_extension_tools.cached_load_inline(
        jit.name("inline_jit_extension"), INLINE_SOURCE, functions=INLINE_FUNCTIONS, extra_cflags=[],
        extra_cuda_cflags=[],
        build_directory=os.environ["TORCH_EXTENSIONS_DIR"])
    assert module is inline_extension


# -- CUDA (torch's CUDA tests; built here only where torch is a CUDA build with nvcc) ------------------------

CUDA_KERNEL = """
__global__ void sigmoid_add_kernel(const float* __restrict__ x, const float* __restrict__ y,
                                   float* __restrict__ output, const int size) {
  const int index = blockIdx.x * blockDim.x + threadIdx.x;
  if (index < size) {
    output[index] = 1.0f / (1.0f + __expf(-x[index])) + 1.0f / (1.0f + __expf(-y[index]));
  }
}
torch::Tensor sigmoid_add(torch::Tensor x, torch::Tensor y) {
  auto output = torch::zeros_like(x);
  const int threads = 1024;
  const int blocks = (output.numel() + threads - 1) / threads;
  sigmoid_add_kernel<<<blocks, threads>>>(x.data_ptr<float>(), y.data_ptr<float>(), output.data_ptr<float>(),
                                          output.numel());
  return output;
}
"""


@pytest.mark.cuda_build
@pytest.mark.gpu
def test_inline_jit_compile_extension_cuda(jit: Jit) -> None:
    # test_jit_cuda_extension, test_inline_jit_compile_extension_cuda and _custom_op_cuda: a .cu source
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    module = jit.load_inline(name=jit.name("inline_jit_extension_cuda"),
                             cpp_sources="torch::Tensor sigmoid_add(torch::Tensor x, torch::Tensor y);",
                             cuda_sources=CUDA_KERNEL, functions=["sigmoid_add"], extra_cuda_cflags=["-O2"],
                             verbose=True, keep_intermediates=False)
    x = torch.zeros(100, device="cuda")
    assert torch.equal(module.sigmoid_add(x, x).cpu(), torch.ones(100))
