"""CACHED_CPP_EXTENSION_COMPILER_LAUNCHER: ccache or sccache in front of every compile, never in the key."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from cpp_extension_tools import BuildError, _loader, cached_load_torch_cpp_extension
from cpp_extension_tools._build.driver import write_driver
from tests.conftest import CompilerLog, run_python, write_module

LAUNCHER = "CACHED_CPP_EXTENSION_COMPILER_LAUNCHER"
FUNCTIONS = {"f0": 0, "f1": 1, "f2": 2}  # with module.c: four sources

needs_ccache = pytest.mark.skipif(shutil.which("ccache") is None,
                                  reason="ccache is not installed (apt-get install ccache; .ci/run installs it)")


@pytest.fixture(autouse=True)
def _no_launcher_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LAUNCHER, raising=False)


class FakeLauncher:
    """A launcher script that logs its arguments, tab-separated, then runs them but its own first one."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / "launcher-calls.log"
        self.path = folder / "fake-launcher"
        self.path.write_text(textwrap.dedent(f"""\
            #!/bin/sh
            line=
            for arg do line="$line$arg\t"; done
            printf '%s\\n' "$line" >> {shlex.quote(str(self.log))}  # one write: compiles run in parallel
            shift
            exec "$@"
            """))
        self.path.chmod(0o755)

    def calls(self) -> list[list[str]]:
        return [line.split("\t")[:-1] for line in self.log.read_text().splitlines()] if self.log.exists() else []


def _ccache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ccache with its storage in tmp_path, hitting across build folders (as a team's cache roots differ)."""
    for variable in ("CCACHE_DISABLE", "CCACHE_RECACHE", "CCACHE_READONLY", "CCACHE_NODIRECT", "CCACHE_PREFIX",
                     "CCACHE_EXTRAFILES", "CCACHE_HASHDIR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("CCACHE_DIR", str(tmp_path / "ccache"))
    monkeypatch.setenv("CCACHE_CONFIGPATH", str(tmp_path / "ccache.conf"))
    monkeypatch.setenv("CCACHE_BASEDIR", str(tmp_path))  # paths below it are hashed relative to the build folder
    monkeypatch.setenv("CCACHE_NOHASHDIR", "1")
    monkeypatch.setenv("CCACHE_COMPILERCHECK", "content")
    monkeypatch.setenv(LAUNCHER, "ccache")


def _ccache_stats() -> dict[str, int]:
    output = subprocess.run(["ccache", "--print-stats"], capture_output=True, text=True, check=True).stdout
    return {name: int(value) for name, value in (line.split("\t") for line in output.splitlines())}


def _ccache_counts(before: dict[str, int]) -> tuple[int, int, int]:
    """(hits, misses, links) since ``before``."""
    after = _ccache_stats()
    hits = sum(after[n] - before[n] for n in ("direct_cache_hit", "preprocessed_cache_hit"))
    return hits, after["cache_miss"] - before["cache_miss"], after["called_for_link"] - before["called_for_link"]


def _keys(root: Path, name: str) -> list[str]:
    return [json.loads(p.read_text())["key"] for p in sorted(root.glob(f"{name}/artifacts/*/manifest.json"))]


@needs_ccache
def test_ccache_serves_a_cleared_cache(tmp_path: Path, compilers: CompilerLog,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _ccache(tmp_path, monkeypatch)
    sources = write_module(tmp_path / "src", functions=FUNCTIONS)
    first_root, second_root = tmp_path / "cache-a", tmp_path / "cache-b"
    before = _ccache_stats()
    assert cached_load_torch_cpp_extension("ccache_ext", sources, build_directory=str(first_root)).f2() == 2
    assert _ccache_counts(before) == (0, len(sources), 0)
    assert len(compilers.links()) == 1  # the link ran, but not through ccache

    # Another cache root (a teammate's, or this one cleared): the library builds again, ccache compiles nothing.
    compilers.reset()
    before = _ccache_stats()
    module = cached_load_torch_cpp_extension("ccache_ext", sources, build_directory=str(second_root))
    assert module.f0() == 0 and module.f1() == 1 and module.f2() == 2
    assert _ccache_counts(before) == (len(sources), 0, 0)
    assert len(compilers.links()) == 1
    first_key, = _keys(first_root, "ccache_ext")
    assert _keys(second_root, "ccache_ext") == [first_key]


def test_launcher_is_not_in_the_key(tmp_path: Path, cache_root: Path, compilers: CompilerLog) -> None:
    sources = write_module(tmp_path / "src", functions=FUNCTIONS)
    assert cached_load_torch_cpp_extension("keyed_ext", sources).f1() == 1
    launcher = FakeLauncher(tmp_path / "launcher")
    compilers.reset()
    # A fresh process with the launcher set finds the artifact built without it.
    result = run_python(f"""
        from cpp_extension_tools import cached_load_torch_cpp_extension
        print(cached_load_torch_cpp_extension("keyed_ext", {sources!r}).f2())
        """, env={LAUNCHER: f"{launcher.path} --tag"})
    assert result.stdout.strip().splitlines()[-1] == "2"
    assert launcher.calls() == [] and compilers.calls() == []
    assert len(_keys(cache_root, "keyed_ext")) == 1


def test_missing_launcher_is_a_clear_build_error(tmp_path: Path, cache_root: Path, compilers: CompilerLog,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sources = write_module(tmp_path / "src")
    monkeypatch.setenv(LAUNCHER, "no-such-launcher --some-option")
    with pytest.raises(BuildError) as info:
        cached_load_torch_cpp_extension("missing_ext", sources)
    message = str(info.value)
    assert LAUNCHER in message and "'no-such-launcher'" in message and f"unset {LAUNCHER}" in message
    assert info.value.name == "missing_ext"
    assert compilers.calls() == [] and _keys(cache_root, "missing_ext") == []
    monkeypatch.delenv(LAUNCHER)
    assert cached_load_torch_cpp_extension("missing_ext", sources).answer() == 42


CPP_SOURCE = 'extern "C" long cpp_part(void) { return 7; }\n'


def test_launcher_sees_every_compile_and_no_link(tmp_path: Path, cache_root: Path, compilers: CompilerLog,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sources = write_module(tmp_path / "src", functions=FUNCTIONS)
    (tmp_path / "src" / "part.cpp").write_text(CPP_SOURCE)
    sources.append(str(tmp_path / "src" / "part.cpp"))
    launcher = FakeLauncher(tmp_path / "launcher dir")  # a space: the path must be quoted in the driver
    monkeypatch.setenv("PATH", f"{launcher.path.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(LAUNCHER, "fake-launcher --tag=seen")  # found on PATH, with an argument
    assert cached_load_torch_cpp_extension("launched_ext", sources).f2() == 2
    calls = launcher.calls()
    assert all(call[0] == "--tag=seen" and "-c" in call for call in calls)
    compiled = {call[call.index("-c") + 1]: call[1] for call in calls}
    assert len(calls) == len(compiled) == len(compilers.compiles()) == len(sources)
    assert compiled == {source: compilers.cxx if source.endswith(".cpp") else compilers.cc for source in sources}
    assert len(compilers.links()) == 1


@needs_ccache
def test_ccache_does_not_share_native_objects_across_cpus(tmp_path: Path, compilers: CompilerLog,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """ccache hashes "-march=native" as text; the library makes it hash the CPU the key was made for."""
    _ccache(tmp_path, monkeypatch)
    sources = write_module(tmp_path / "src", functions=FUNCTIONS)
    n = len(sources)
    for number, (cpu, expected) in enumerate((("cpu-a", (0, n, 0)), ("cpu-b", (0, n, 0)), ("cpu-a", (n, 0, 0)))):
        monkeypatch.setenv("CACHED_CPP_EXTENSION_CPU_FINGERPRINT", cpu)
        before = _ccache_stats()
        module = cached_load_torch_cpp_extension("native_ext", sources, extra_cflags=["-O2", "-march=native"],
                                                 build_directory=str(tmp_path / f"cache-{number}"))
        assert module.f1() == 1
        assert _ccache_counts(before) == expected, cpu


FAKE_COMPILER = textwrap.dedent("""\
    #!/bin/sh
    printf '%s %s\\n' "{name}" "$*" >> {log}
    """)


def test_driver_puts_the_launcher_first_for_compiles_only(tmp_path: Path) -> None:
    folder = tmp_path / "odd 'folder'"
    folder.mkdir()
    log = tmp_path / "calls.log"
    for name in ("cc", "cxx"):
        (folder / name).write_text(FAKE_COMPILER.format(name=name, log=shlex.quote(str(log))))
        (folder / name).chmod(0o755)
    launcher = FakeLauncher(folder)
    driver = write_driver(str(folder), [str(folder / "cc")], [str(folder / "cxx")],
                          [str(launcher.path), "--it's"])
    for arguments in (["-std=c++17", "-O2", "-c", "a.c", "-o", "a.o"], ["-std=c++17", "-c", "b.cpp", "-o", "b.o"],
                      ["a.o", "b.o", "-shared", "-o", "m.so"], ["-dumpversion"]):
        subprocess.run([driver, *arguments], check=True)
    assert launcher.calls() == [["--it's", str(folder / "cc"), "-std=gnu17", "-O2", "-c", "a.c", "-o", "a.o"],
                                ["--it's", str(folder / "cxx"), "-std=c++17", "-c", "b.cpp", "-o", "b.o"]]
    assert log.read_text().splitlines() == ["cc -std=gnu17 -O2 -c a.c -o a.o", "cxx -std=c++17 -c b.cpp -o b.o",
                                            "cxx a.o b.o -shared -o m.so", "cxx -dumpversion"]


KERNEL = textwrap.dedent("""\
    __global__ void add_one(float *x, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) x[i] += 1.0f;
    }
    """)


def _cuda_skip_reason() -> str | None:
    import torch

    from cpp_extension_tools._env import cuda as _cuda

    if torch.version.cuda is None:
        return "CPU-only torch"
    return "no nvcc" if _cuda.find_nvcc() is None else None


@pytest.mark.cuda_build
@pytest.mark.parametrize("user_nvcc", [False, True], ids=["nvcc", "user_PYTORCH_NVCC"])
def test_nvcc_compiles_go_through_the_launcher(tmp_path: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch,
                                               user_nvcc: bool) -> None:
    reason = _cuda_skip_reason()
    if reason:
        pytest.skip(reason)
    from cpp_extension_tools._env import cuda as _cuda
    from cpp_extension_tools._env import identity as _identity

    nvcc = _cuda.find_nvcc()
    assert nvcc is not None
    if user_nvcc:  # the user's own nvcc command, which the launcher goes in front of
        wrapper = tmp_path / "nvcc wrapper"
        wrapper.write_text(f'#!/bin/sh\nexec {nvcc} "$@"\n')
        wrapper.chmod(0o755)
        nvcc = str(wrapper)
        monkeypatch.setenv("PYTORCH_NVCC", shlex.quote(nvcc))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    sources = write_module(tmp_path / "src")
    (tmp_path / "src" / "kernel.cu").write_text(KERNEL)
    sources.append(str(tmp_path / "src" / "kernel.cu"))
    launcher = FakeLauncher(tmp_path / "launcher")
    monkeypatch.setenv(LAUNCHER, f"{launcher.path} --tag")
    nvcc_before = os.environ.get("PYTORCH_NVCC")
    assert cached_load_torch_cpp_extension("cuda_launched_ext", sources, with_cuda=True).answer() == 42
    assert os.environ.get("PYTORCH_NVCC") == nvcc_before
    compiled = {call[call.index("-c") + 1]: call[1] for call in launcher.calls()}
    assert len(launcher.calls()) == len(compiled) == len(sources)
    cc = _identity.resolve_compiler("CC", "cc").path
    assert compiled == {source: nvcc if source.endswith(".cu") else cc for source in sources}

    # Without the launcher, the same artifact: nvcc's identity in the key is the user's, not the launched one.
    monkeypatch.delenv(LAUNCHER)
    monkeypatch.setattr(_loader, "_memo", {})
    assert cached_load_torch_cpp_extension("cuda_launched_ext", sources, with_cuda=True).answer() == 42
    assert len(_keys(cache_root, "cuda_launched_ext")) == 1
