"""The shared precompiled header (_build.pch): which sources use it, how it is built and shared, and
that it is only ever a speed-up.

The torch builds (slow) share one cache root for the module: the first build pays the header's own
build, the next module reuses it. The rest uses small standard-library headers, which gcc
precompiles in about a second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from cpp_extension_tools._build import pch
from tests.conftest import CompilerLog, run_python

GXX = "g++"


def _write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_first_include_sees_through_comments_blank_lines_and_pragma_once(tmp_path: Path) -> None:
    source = _write(tmp_path / "a.cpp", """\
        // a comment
        /* a block
           comment */
        #pragma once

        #include <torch/extension.h>
        #include <vector>
        """)
    assert pch.first_include(source) == "torch/extension.h"
    assert pch.first_include(_write(tmp_path / "b.cpp", '#include "ATen/ATen.h"\n')) == "ATen/ATen.h"
    assert pch.first_include(_write(tmp_path / "c.cpp", "#include <vector>\n#include <torch/torch.h>\n")) == "vector"
    assert pch.first_include(_write(tmp_path / "d.cpp", "#define X 1\n#include <torch/extension.h>\n")) is None
    assert pch.first_include(str(tmp_path / "missing.cpp")) is None


def test_pch_flags_keep_what_gcc_checks_and_drop_the_module_name() -> None:
    flags = ["-DTORCH_EXTENSION_NAME=mod_a", "-DTORCH_API_INCLUDE_EXTENSION_H", "-isystem", "/t/include",
             "-fPIC", "-std=c++17", "-O3", "-march=native", "-Wall", "-Wextra", "-H", "-UFOO", "-DBAR=2"]
    assert pch.pch_flags(flags) == ["-DTORCH_API_INCLUDE_EXTENSION_H", "-isystem", "/t/include", "-fPIC",
                                    "-std=c++17", "-O3", "-march=native", "-UFOO", "-DBAR=2"]


def test_use_pch_false_the_setting_and_cuda_builds_turn_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    def config(**request: Any) -> Any:
        return cast(Any, SimpleNamespace(request=SimpleNamespace(**{"with_cuda": False, **request})))

    assert pch._wanted(config(use_pch=True))
    assert not pch._wanted(config(use_pch=False))
    assert not pch._wanted(config(use_pch=True, with_cuda=True))
    monkeypatch.setenv("CACHED_CPP_EXTENSION_DISABLE_PCH", "1")
    assert not pch._wanted(config(use_pch=True))


def test_only_cxx_sources_that_include_a_torch_header_first_qualify(tmp_path: Path) -> None:
    config = cast(Any, SimpleNamespace(request=SimpleNamespace(with_cuda=False, use_pch=True)))
    sources = [_write(tmp_path / "a.c", "#include <torch/extension.h>\n"),  # C: never
               _write(tmp_path / "b.cpp", "#include <vector>\n#include <torch/extension.h>\n"),
               _write(tmp_path / "k.cu", "#include <torch/extension.h>\n")]
    toolchain = cast(Any, None)  # not needed when no source qualifies: no compiler is asked anything
    assert pch.shared_pch_flags(config, toolchain, str(tmp_path), str(tmp_path), sources, sources, []) == {}
    assert not (tmp_path / pch.PCH_FOLDER).exists()


def _small_pch(tmp_path: Path, flags: list[str]) -> str:
    """A PCH of <vector> (gcc builds it in about a second), published as the cache would."""
    folder = str(tmp_path / "root" / pch.PCH_FOLDER / "vector-0123456789abcdef")
    pch.build_shared_pch(folder, [GXX], "vector", flags)
    return folder


def test_gcc_uses_the_pch_when_flags_match_and_falls_back_silently_otherwise(tmp_path: Path) -> None:
    folder = _small_pch(tmp_path, ["-O2", "-DSELECTOR=1"])
    assert pch._usable(folder)
    build = tmp_path / "build"
    build.mkdir()
    words = pch._link_into(folder, str(build), "vector")
    source = _write(tmp_path / "s.cpp", """\
        #include <vector>
        int f() { return int(std::vector<int>(SELECTOR).size()); }
        """)
    # -fpch-deps goes with -MD, as in every compile ninja runs (gcc 12 crashes on it alone).
    deps = ["-MD", "-MF", str(tmp_path / "s.d")]
    used = subprocess.run([GXX, "-O2", "-DSELECTOR=1", *deps, *words, "-H", "-c", source, "-o", str(tmp_path / "s.o")],
                          capture_output=True, text=True, check=True)
    assert any(line.startswith("!") and line.endswith(".gch") for line in used.stderr.splitlines())
    # -O0 instead of -O2: gcc refuses the .gch and reads the header, with no warning and the same result.
    other = subprocess.run([GXX, "-O0", "-DSELECTOR=2", *deps, *words, "-H", "-c", source, "-o", str(tmp_path / "t.o")],
                           capture_output=True, text=True, check=True)
    lines = other.stderr.splitlines()
    assert not any(line.startswith("!") for line in lines)
    assert not any("warning" in line or "invalid" in line for line in lines)
    pch.release_links(str(build))
    assert sorted(os.listdir(build / "pch")) == ["vector.h"]


def test_the_pch_is_rebuilt_when_a_header_it_was_built_from_changes(tmp_path: Path) -> None:
    include = tmp_path / "include"
    include.mkdir()
    header = include / "mine.h"
    header.write_text("inline int mine() { return 1; }\n")
    folder = str(tmp_path / "root" / pch.PCH_FOLDER / "mine-0123456789abcdef")
    pch.build_shared_pch(folder, [GXX], "mine.h", ["-I", str(include)])
    assert pch._usable(folder)
    built = os.stat(os.path.join(folder, "mine.h.gch")).st_ino
    time.sleep(0.01)
    header.write_text("inline int mine() { return 22; }\n")
    assert not pch._usable(folder)
    pch.build_shared_pch(folder, [GXX], "mine.h", ["-I", str(include)])
    assert pch._usable(folder)
    assert os.stat(os.path.join(folder, "mine.h.gch")).st_ino != built


def test_a_failed_pch_build_is_recorded_once_and_not_repeated(tmp_path: Path, compilers: CompilerLog) -> None:
    folder = str(tmp_path / "root" / pch.PCH_FOLDER / "nope-0123456789abcdef")
    for _ in range(2):
        pch.build_shared_pch(folder, [compilers.cxx], "no/such/header.h", [])
    assert not pch._usable(folder)
    assert len([c for c in compilers.calls() if "c++-header" in c]) == 1


def test_a_killed_pch_builder_leaves_nothing_that_blocks_the_next_build(tmp_path: Path) -> None:
    folder = str(tmp_path / "root" / pch.PCH_FOLDER / "vector-0123456789abcdef")
    slow = tmp_path / "slow-g++"
    slow.write_text(f"#!/bin/sh\nsleep 60\nexec {GXX} \"$@\"\n")
    slow.chmod(0o755)
    builder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        from cpp_extension_tools._build import pch
        pch.build_shared_pch({folder!r}, [{str(slow)!r}], "vector", [])
        """)], start_new_session=True)
    parent = os.path.dirname(folder)
    try:
        deadline = time.monotonic() + 30
        staging = os.path.basename(folder) + ".tmp-"  # the compile has started once its folder exists
        while time.monotonic() < deadline and not any(n.startswith(staging) for n in _listing(parent)):
            time.sleep(0.01)
        assert any(n.startswith(staging) for n in _listing(parent)), "the builder never started"
    finally:
        os.killpg(builder.pid, signal.SIGKILL)  # the builder, its compiler and the sleep
        builder.wait()
    started = time.monotonic()
    pch.build_shared_pch(folder, [GXX], "vector", [])
    assert time.monotonic() - started < 30  # the dead builder's lock did not make us wait
    assert pch._usable(folder)
    assert not any(".tmp-" in n for n in _listing(parent)), _listing(parent)


def _listing(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


# --- torch builds ------------------------------------------------------------------------------------

_MODULE = """\
    // {name}: one function, checked by its result
    #include <torch/extension.h>

    torch::Tensor {name}_scaled(torch::Tensor x) {{ return x * {factor}; }}

    PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {{ m.def("scaled", &{name}_scaled); }}
    """


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pch-cache")


@pytest.mark.slow
def test_the_second_torch_module_builds_the_header_once_and_uses_it(shared_root: Path, tmp_path: Path,
                                                                    compilers: CompilerLog) -> None:
    """A first one-source module only notes that it could have used the header (building it would cost more
    than it saves); the next one builds it once and compiles with it."""
    results = []
    for name, factor in (("pch_a", 3), ("pch_b", 5)):
        source = _write(tmp_path / f"{name}.cpp", _MODULE.format(name=name, factor=factor))
        output = run_python(f"""\
            import torch
            from cpp_extension_tools import cached_load_torch_cpp_extension
            m = cached_load_torch_cpp_extension({name!r}, [{source!r}], extra_cflags=["-O2", "-H"])
            print(int(m.scaled(torch.ones(1)).item()))
            """, env={"CACHED_CPP_EXTENSION_BUILD_DIR": str(shared_root), **compilers.env})
        results.append(int(output.stdout.split()[-1]))
    assert results == [3, 5]
    header_builds = [c for c in compilers.calls() if "c++-header" in c]
    assert len(header_builds) == 1, header_builds
    first, second = compilers.compiles(".cpp")
    assert "pch_a.cpp" in first and "-include" not in first, first
    assert "pch_b.cpp" in second and "-include" in second and "-fpch-deps" in second, second
    (log,) = shared_root.glob("pch_b/builds/*/build.log")  # gcc -H: "! <file>.gch" is a PCH it used
    assert any(line.startswith("! ") and line.endswith(".gch") for line in log.read_text().splitlines()), log
    assert [p.name for p in (shared_root / pch.PCH_FOLDER).iterdir() if p.is_dir()] != []


def test_a_missing_header_is_built_for_two_sources_or_when_an_earlier_build_wanted_it(tmp_path: Path) -> None:
    folder = str(tmp_path / pch.PCH_FOLDER / "torch_extension-0123456789abcdef")
    assert pch._pays_off(folder, 2)
    assert not pch._pays_off(folder, 1)  # leaves the note
    assert Path(folder + ".wanted").exists()
    assert pch._pays_off(folder, 1)


@pytest.mark.slow
def test_a_module_with_other_flags_or_the_setting_builds_correctly(shared_root: Path, tmp_path: Path,
                                                                    compilers: CompilerLog) -> None:
    source = _write(tmp_path / "pch_c.cpp", _MODULE.format(name="pch_c", factor="SCALE"))
    output = run_python(f"""\
        import torch
        from cpp_extension_tools import cached_load_torch_cpp_extension
        m = cached_load_torch_cpp_extension("pch_c", [{source!r}], extra_cflags=["-O2", "-DSCALE=7"])
        print(int(m.scaled(torch.ones(1)).item()))
        """, env={"CACHED_CPP_EXTENSION_BUILD_DIR": str(shared_root), "CACHED_CPP_EXTENSION_DISABLE_PCH": "1",
                  **compilers.env})
    assert int(output.stdout.split()[-1]) == 7
    assert [c for c in compilers.calls() if "c++-header" in c or "-include" in c] == []
    assert len(compilers.compiles(".cpp")) == 1


def test_list_prune_and_clear_skip_or_delete_the_shared_pch_folder(tmp_path: Path) -> None:
    from tests.conftest import write_module
    from tests.test_cli import run_cli

    root = tmp_path / "root"
    folder = _small_pch(tmp_path, [])
    run_python(f"""\
        from cpp_extension_tools import cached_load_torch_cpp_extension
        assert cached_load_torch_cpp_extension("plain", {write_module(tmp_path / "src")!r}).answer() == 42
        """, env={"CACHED_CPP_EXTENSION_BUILD_DIR": str(root)})
    listed = run_cli("list", root=root)
    assert listed.returncode == 0 and "plain" in listed.stdout and pch.PCH_FOLDER not in listed.stdout, listed
    assert run_cli("list", "--json", root=root).returncode == 0
    assert run_cli("prune", "--older-than", "1000d", root=root).returncode == 0
    assert pch._usable(folder)
    dry = run_cli("clear", "--dry-run", root=root)
    assert dry.returncode == 0 and "would delete 1 shared precompiled header" in dry.stdout, dry
    assert pch._usable(folder)
    cleared = run_cli("clear", root=root)
    assert cleared.returncode == 0 and "deleted 1 shared precompiled header" in cleared.stdout, cleared
    assert not os.path.exists(folder)
    assert os.path.exists(folder + ".pch-lock")  # lock files are never deleted
    assert run_cli("list", root=root).returncode == 0
