"""The build worker script stays stdlib-only, and the CUDA arch list has one precedence for all its users."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cpp_extension_tools._build import worker as _build_worker
from cpp_extension_tools._build import worker_support as _worker_support
from cpp_extension_tools._env import cuda as _cuda
from tests.conftest import CompilerLog, run_python, write_module

PACKAGE = Path(_build_worker.__file__).parents[1]
# The modules the worker loads from their files (written for it, standard library only), by file; how its
# package mode imports them (relative imports, by first name); the names its script mode loads them under.
WORKER_SIBLINGS = {"_env/cuda.py", "_build/worker_support.py"}
SIBLING_IMPORTS = {"_env", "worker_support"}
SCRIPT_MODE_NAMES = {"cpp_extension_tools_worker_cuda", "cpp_extension_tools_worker_support"}


def _imported_names(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, in functions too; siblings' relative imports by name."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # "from . import worker_support" names the module, "from .._env import cuda" its package
                names |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
            else:
                names.add(str(node.module).split(".")[0])
    return names


@pytest.mark.parametrize("module", ["_build/worker.py", *sorted(WORKER_SIBLINGS)])
def test_the_worker_and_its_siblings_import_only_the_standard_library_and_each_other(module: str) -> None:
    allowed = set(sys.stdlib_module_names) | SIBLING_IMPORTS | {"__future__"}
    if module != "_build/worker_support.py":
        allowed.add("torch")  # inside the functions of the torch mode
    imported = _imported_names(PACKAGE / module)
    assert imported - allowed == set()
    if module in WORKER_SIBLINGS:  # and they do not import each other
        assert imported & SIBLING_IMPORTS == set()


def test_the_worker_script_loads_without_the_package_and_imports_only_stdlib_modules() -> None:
    """As the library runs it (``python -S <script>``): no site-packages, no package, even with PYTHONSAFEPATH."""
    check = f"""
import json, runpy, sys
before = set(sys.modules)
runpy.run_path({_build_worker.__file__!r}, run_name="worker_import_check")
new = sorted(name.split(".")[0] for name in set(sys.modules) - before)
print(json.dumps(sorted(set(new) - set(sys.stdlib_module_names))))
"""
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONSAFEPATH": "1"}
    result = subprocess.run([sys.executable, "-S", "-c", check], capture_output=True, text=True, env=env,
                            cwd="/", timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == SCRIPT_MODE_NAMES


def _fake_torch(cuda: str | None, capabilities: list[tuple[int, int]], arch_flags: str) -> Any:
    return SimpleNamespace(
        version=SimpleNamespace(cuda=cuda),
        cuda=SimpleNamespace(is_available=lambda: bool(capabilities), device_count=lambda: len(capabilities),
                             get_device_capability=lambda i: capabilities[i]),
        _C=SimpleNamespace(_cuda_getArchFlags=lambda: arch_flags))


def test_the_arch_list_comes_from_the_setting_then_the_visible_gpus_then_torchs_build(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One precedence for the build worker, ``info`` and prebuilt wheels (which skip the GPUs)."""
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    gpus = _fake_torch("12.8", [(9, 0), (8, 0), (9, 0)], "sm_75 sm_80")
    assert _cuda.cuda_arch_list(gpus) == ("8.0;9.0", "visible GPUs")
    assert _cuda.cuda_arch_list(gpus, visible_gpus=False) == ("7.5;8.0+PTX", "torch build")
    no_gpu = _fake_torch("12.8", [], "sm_75 sm_80")
    assert _cuda.cuda_arch_list(no_gpu) == ("7.5;8.0+PTX", "torch build (no GPU visible)")
    assert _cuda.cuda_arch_list(_fake_torch("12.8", [], "")) == (None, None)
    assert _cuda.cuda_arch_list(_fake_torch(None, [], "")) == (None, None)  # a CPU-only torch
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6")
    assert _cuda.cuda_arch_list(gpus) == ("8.6", "TORCH_CUDA_ARCH_LIST")
    assert _cuda.cuda_arch_list(gpus, visible_gpus=False) == ("8.6", "TORCH_CUDA_ARCH_LIST")


def test_device_flags_follow_the_arch_list_unless_the_user_chose_architectures() -> None:
    assert _cuda.device_arch_flags(["-O3", "-Xcompiler", "-march=native"], "8.0;9.0+PTX") == [
        "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90"]
    assert _cuda.device_arch_flags(["-gencode=arch=compute_70,code=sm_70"], "8.0") == []


@pytest.mark.parametrize(("text", "expected"), [
    ("a.o: a.c b.h\n", ["a.c", "b.h"]),
    ("a.o: /x/a.c \\\n /x/b.h \\\r\n /x/c.h\n", ["/x/a.c", "/x/b.h", "/x/c.h"]),
    ("a.o: /it\\ has\\ spaces/b.h /h\\#sh.h /d$$llar.h\n", ["/it has spaces/b.h", "/h#sh.h", "/d$llar.h"]),
    ("a.o: /back\\\\slash.h /lone\\x.h /lone$.h\t/tab.h\n", ["/back\\slash.h", "/lone\\x.h", "/lone$.h", "/tab.h"]),
    ("a.o: a.c\nb.h:\n", ["a.c"]),  # the phony targets of -MP are not prerequisites
    ("a.o:\n", []),
])
def test_depfiles_are_read_as_gcc_escapes_them(text: str, expected: list[str]) -> None:
    assert _worker_support.parse_depfile(text) == expected


def test_the_version_line_is_gccs_first_line_and_nvccs_release_line() -> None:
    gcc = "g++ (Debian 12.2.0-14) 12.2.0\nCopyright (C) 2022\n\n"
    nvcc = "nvcc: NVIDIA (R) Cuda compiler driver\nBuilt on x\nCuda compilation tools, release 12.4\nBuild cuda_12.4\n"
    assert _worker_support.version_line(["g++"], gcc) == "g++ (Debian 12.2.0-14) 12.2.0"
    assert _worker_support.version_line(["/opt/cuda/bin/nvcc"], nvcc) == "Cuda compilation tools, release 12.4"
    assert _worker_support.version_line(["g++"], "") == _worker_support.version_line(["g++"], None) == "unknown"


def test_a_worker_started_ahead_of_its_spec_waits_for_it_and_leaves_at_end_of_file(tmp_path: Path) -> None:
    # The library starts the worker with --wait before build.ninja is written; a build that fails
    # before the worker is needed closes its stdin: it must leave without reading a spec or building.
    spec, result = tmp_path / "spec.json", tmp_path / "result.json"
    worker = subprocess.Popen([sys.executable, "-S", _build_worker.__file__, str(spec), str(result),
                               str(os.getpid()), "--wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    with pytest.raises(subprocess.TimeoutExpired):
        worker.wait(timeout=0.5)  # waiting: the spec it names does not exist, yet it has not failed
    assert worker.stdin is not None and worker.stdout is not None
    worker.stdin.close()
    assert worker.wait(timeout=30) == 1
    assert worker.stdout.read() == b"" and not result.exists()
    worker.stdout.close()


def _process_gone(pid: int, timeout: float) -> bool:
    """Whether ``pid`` has exited (or is a zombie nobody reaps) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_a_caller_killed_after_starting_its_early_worker_leaves_no_worker_and_no_obstacle(
        tmp_path: Path, compilers: CompilerLog, cache_root: Path) -> None:
    """SIGKILL between the early worker's start and its "g": the worker must leave (no spec read, nothing
    built), and the next caller builds the module once and loads it."""
    sources = write_module(tmp_path / "src")
    pid_file = tmp_path / "worker.pid"
    killed = run_python(f"""
        import os, signal
        from cpp_extension_tools._build import run
        start = run._EarlyWorker.start
        def start_then_die(self, *args, **kwargs):
            start(self, *args, **kwargs)
            with open({str(pid_file)!r}, "w") as f:
                f.write(str(self._process.pid))
            os.kill(os.getpid(), signal.SIGKILL)  # before the spec is written and the worker told "g"
        run._EarlyWorker.start = start_then_die
        from cpp_extension_tools import cached_load_torch_cpp_extension
        cached_load_torch_cpp_extension("early_killed", {sources!r})
    """, check=False, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    worker_pid = int(pid_file.read_text())
    assert _process_gone(worker_pid, timeout=30), f"the early worker {worker_pid} outlived its killed caller"
    assert compilers.compiles() == []  # it built nothing
    loaded = run_python(f"""
        from cpp_extension_tools import cached_load_torch_cpp_extension
        print(cached_load_torch_cpp_extension("early_killed", {sources!r}).answer())
    """, timeout=300)
    assert loaded.stdout.split() == ["42"]
    assert sorted(compilers.compiled_sources()) == sorted(os.path.basename(s) for s in sources)
