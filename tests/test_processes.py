"""Cross-process behaviour, tested in real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, BuildRuns, CompilerLog, last_json, run_python, write_module

LOAD = """
import json, sys, time, torch
import cpp_extension_tools as c
sources = json.loads(sys.argv[1]) if len(sys.argv) > 1 else SOURCES
try:
    m = c.cached_load_torch_cpp_extension("proc_ext", sources)
    print(json.dumps({"ok": m.answer()}))
except c.BuildError as e:
    print(json.dumps({"error": str(e)}))
"""


def _script(tmp_path: Path, sources: list[str]) -> Path:
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent(LOAD).replace("SOURCES", json.dumps(sources)))
    return script


def _start(script: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})


def test_warm_path_in_a_fresh_process_is_pure(tmp_path: Path, cache_root: Path, compilers: CompilerLog) -> None:
    sources = write_module(tmp_path / "src")
    run_python(f"import cpp_extension_tools as c; c.cached_load_torch_cpp_extension('proc_ext', {sources!r})")
    compilers.reset()
    result = run_python(f"""
        import json, subprocess, sys, os, torch
        def forbidden(*a, **k): raise AssertionError("subprocess on the warm path")
        subprocess.Popen = forbidden
        os.fork = forbidden
        import cpp_extension_tools as c
        from cpp_extension_tools._cache import hashing as _hashing
        hashed = []
        real = _hashing.digest_file
        _hashing.digest_file = lambda p: hashed.append(p) or real(p)
        m = c.cached_load_torch_cpp_extension('proc_ext', {sources!r})
        print(json.dumps({{"answer": m.answer(), "hashed": hashed,
                          "setuptools": "setuptools" in sys.modules,
                          "cpp_extension": "torch.utils.cpp_extension" in sys.modules,
                          "filelock": "filelock" in sys.modules,
                          "cuda_initialized": torch.cuda.is_initialized()}}))
    """)
    assert last_json(result.stdout) == {"answer": 42, "hashed": [], "setuptools": False, "cpp_extension": False,
                                        "filelock": False, "cuda_initialized": False}
    assert compilers.calls() == []


def test_root_is_absolute_in_environment_and_survives_chdir(tmp_path: Path, compilers: CompilerLog) -> None:
    sources = write_module(tmp_path / "src")
    work = tmp_path / "work"
    work.mkdir()
    result = run_python(f"""
        import json, os, subprocess, sys
        import cpp_extension_tools as c
        c.cached_load_torch_cpp_extension('proc_ext', {sources!r})
        root = os.environ["CACHED_CPP_EXTENSION_BUILD_DIR"]
        os.chdir("/")
        code = ("import cpp_extension_tools as c; "
                "print(c.cached_load_torch_cpp_extension('proc_ext', {sources!r}).answer())")
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        print(json.dumps({{"root": root, "child": child.stdout.strip()}}))
    """, cwd=work)
    report = last_json(result.stdout)
    assert isinstance(report, dict)
    assert report == {"root": str(work / "cached_cpp_extensions"), "child": "42"}
    assert len(compilers.compiles()) == 2  # answer.c and module.c, once


@pytest.mark.slow
def test_concurrent_processes_compile_once(tmp_path: Path, cache_root: Path, compilers: CompilerLog) -> None:
    script = _script(tmp_path, write_module(tmp_path / "src"))
    processes = [_start(script, {"COMPILE_DELAY": "1"}) for _ in range(4)]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [last_json(out) for out, _ in outputs] == [{"ok": 42}] * 4, outputs
    assert len(compilers.compiles()) == 2


@pytest.mark.slow
def test_threads_in_one_process_compile_once(tmp_path: Path, cache_root: Path, compilers: CompilerLog) -> None:
    sources = write_module(tmp_path / "src")
    result = run_python(f"""
        import json, threading, torch
        import cpp_extension_tools as c
        results = []
        def load():
            results.append(c.cached_load_torch_cpp_extension('thread_ext', {sources!r}))
        threads = [threading.Thread(target=load) for _ in range(4)]
        [t.start() for t in threads]; [t.join() for t in threads]
        print(json.dumps({{"n": len(results), "same": len({{id(m) for m in results}}) == 1,
                          "answer": results[0].answer()}}))
    """)
    assert last_json(result.stdout) == {"n": 4, "same": True, "answer": 42}
    assert len(compilers.compiles()) == 2


@pytest.mark.slow
def test_failed_build_is_shared_not_repeated(tmp_path: Path, cache_root: Path, compilers: CompilerLog) -> None:
    sources = write_module(tmp_path / "src")
    Path(sources[0]).write_text("this is not C;\n")
    script = _script(tmp_path, sources)
    processes = [_start(script, {"COMPILE_DELAY": "2"}) for _ in range(3)]
    reports = [last_json(p.communicate(timeout=600)[0]) for p in processes]
    assert all(isinstance(r, dict) and "error" in r for r in reports), reports
    assert len({r["error"] for r in reports if isinstance(r, dict)}) == 1
    assert len(compilers.compiles(Path(sources[0]).name)) == 1


def test_waiter_reports_the_holder_and_times_out(tmp_path: Path, cache_root: Path, compilers: CompilerLog) -> None:
    import filelock

    sources = write_module(tmp_path / "src")
    module_folder = cache_root / "proc_ext"
    (module_folder / "artifacts").mkdir(parents=True)
    (module_folder / ".lock.owner").write_text(json.dumps({"pid": 4242, "host": "builder-7", "since": time.time()}))
    with filelock.FileLock(str(module_folder / ".lock")):
        started = time.monotonic()
        result = run_python(f"""
            import logging, sys
            logging.basicConfig(level=logging.INFO, stream=sys.stdout)
            import cpp_extension_tools as c
            try:
                c.cached_load_torch_cpp_extension('proc_ext', {sources!r})
            except c.LockTimeoutError as e:
                print("TIMEOUT", e)
        """, env={"CACHED_CPP_EXTENSION_LOCK_TIMEOUT": "3", "CACHED_CPP_EXTENSION_LOCK_LOG_INTERVAL": "1"})
        elapsed = time.monotonic() - started
    assert "waiting for the build lock" in result.stdout and "pid 4242 on host builder-7" in result.stdout
    assert "TIMEOUT" in result.stdout and "CACHED_CPP_EXTENSION_LOCK_TIMEOUT" in result.stdout
    assert elapsed < 60
    assert compilers.compiles() == []


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["requester", "whole_group"])
def test_killed_build_leaves_a_usable_cache(tmp_path: Path, cache_root: Path, compilers: CompilerLog,
                                            victim: str) -> None:
    script = _script(tmp_path, write_module(tmp_path / "src"))
    process = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "COMPILE_DELAY": "30"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not compilers.compiles() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert compilers.compiles(), "the build never started"
    if victim == "requester":
        os.kill(process.pid, signal.SIGKILL)  # the worker, ninja and the compilers must follow
    else:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert last_json(result.stdout) == {"ok": 42}
    assert time.monotonic() - started < 120


def test_stale_torch_baton_is_removed(tmp_path: Path, cache_root: Path, compilers: CompilerLog) -> None:
    sources = write_module(tmp_path / "src")
    script = _script(tmp_path, sources)
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True, timeout=300)
    build_folders = list((cache_root / "proc_ext" / "builds").iterdir())
    assert len(build_folders) == 1
    (build_folders[0] / "lock").write_text("")  # torch's FileBaton, as a killed torch build leaves it
    write_module(tmp_path / "src", functions={"answer": 43})
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert last_json(result.stdout) == {"ok": 43}
    assert "stale torch build lock" in result.stderr or not (build_folders[0] / "lock").exists()


@pytest.mark.parametrize("damage", ["no_manifest", "bad_json", "truncated_so", "flipped_so", "leftover_tmp"])
def test_damaged_entries_are_rebuilt_not_loaded(tmp_path: Path, cache_root: Path, compilers: CompilerLog,
                                                damage: str) -> None:
    script = _script(tmp_path, write_module(tmp_path / "src"))
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True, timeout=300)
    artifact = next((cache_root / "proc_ext" / "artifacts").iterdir())
    library = artifact / "proc_ext.so"
    if damage == "no_manifest":
        (artifact / "manifest.json").unlink()
    elif damage == "bad_json":
        (artifact / "manifest.json").write_text("{not json")
    elif damage == "truncated_so":
        library.write_bytes(library.read_bytes()[:1000])
    elif damage == "flipped_so":
        data = bytearray(library.read_bytes())
        data[len(data) // 2] ^= 0xFF
        library.write_bytes(bytes(data))
    else:
        (artifact / "proc_ext.so.tmp-1-deadbeef").write_bytes(b"half")
    builds = BuildRuns(cache_root / "proc_ext")
    builds.mark()
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert last_json(result.stdout) == {"ok": 42}
    # A repair runs a build; ninja then finds the build folder up to date, so the repaired artifact is
    # the build folder's binary again. A leftover temporary file beside an intact artifact is no damage.
    assert builds.ran() == (damage != "leftover_tmp")
    built = next((cache_root / "proc_ext" / "builds").iterdir()) / "proc_ext.so"
    assert library.read_bytes() == built.read_bytes()
    assert json.loads((artifact / "manifest.json").read_text())["artifact_id"] == artifact.name


def _example_spawn_workers(start_method_module: str) -> str:
    return f"""
        import json
        import {start_method_module} as mp

        def work(_):
            import os, time
            start = time.perf_counter()
            import example_package
            return example_package.Add42ToInteger(1)

        if __name__ == "__main__":
            ctx = mp.get_context("spawn")
            with ctx.Pool(4) as pool:
                print(json.dumps(pool.map(work, range(4))))
    """


def _example_c_sources() -> list[str]:
    """What one build of example_package compiles on a CPU-only torch: each C file once."""
    return sorted(p.name for p in (REPO / "csrc").glob("*.c"))


@pytest.mark.slow
@pytest.mark.parametrize("mp_module", ["multiprocessing", "torch.multiprocessing"])
def test_example_package_spawn_workers_compile_once(tmp_path: Path, cache_root: Path, compilers: CompilerLog,
                                                    mp_module: str) -> None:
    script = tmp_path / "workers.py"
    script.write_text(textwrap.dedent(_example_spawn_workers(mp_module)))
    cold = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert last_json(cold.stdout) == [43] * 4, cold.stderr
    assert compilers.compiled_sources() == _example_c_sources()  # one build: each source compiled once
    compilers.reset()
    warm = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert last_json(warm.stdout) == [43] * 4
    assert compilers.calls() == []


def test_example_package_recipe(tmp_path: Path, cache_root: Path, compilers: CompilerLog) -> None:
    result = run_python("import example_package as ep; print(ep.GetStaticInteger(), ep.Add42ToInteger(-42))",
                        cwd=REPO)
    assert result.stdout.split() == ["42", "0"]


@pytest.mark.slow
def test_example_package_works_after_pip_install(tmp_path: Path, cache_root: Path, compilers: CompilerLog) -> None:
    """`pip install .` ships csrc/ as package data: the installed package builds from its own copy."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO, checkout, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.egg-info", "cached_cpp_extensions", "__pycache__", "wip", "bench"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(checkout)],
                   check=True, capture_output=True, text=True, timeout=600)
    shutil.rmtree(checkout)  # the installed package must not lean on the source tree
    assert (site / "example_package" / "csrc" / "example_module.c").is_file()
    result = run_python("""
        import json, example_package as ep
        print(json.dumps([ep.__file__, ep.GetStaticInteger(), ep.Add42ToInteger(1)]))
        """, env={"PYTHONPATH": str(site)}, cwd=tmp_path)
    location, static, added = last_json(result.stdout)  # type: ignore[misc]
    assert Path(location).is_relative_to(site)
    assert (static, added) == (42, 43)
    assert compilers.compiled_sources() == _example_c_sources()


def test_a_long_wait_for_the_lock_becomes_a_warning_once_a_minute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """INFO every interval; a WARNING (visible without logging set-up) after WARN_AFTER, then once per WARN_AFTER."""
    import logging

    import filelock

    from cpp_extension_tools import LockTimeoutError
    from cpp_extension_tools._cache import lock as _locking

    monkeypatch.setattr(_locking, "WARN_AFTER", 0.6)  # stands for a minute
    monkeypatch.setenv("CACHED_CPP_EXTENSION_LOCK_LOG_INTERVAL", "0.2")
    lock_path = str(tmp_path / ".lock")
    holder = filelock.FileLock(lock_path)
    with holder, caplog.at_level(logging.INFO, logger="cpp_extension_tools"), pytest.raises(LockTimeoutError):
        with _locking.module_lock(lock_path, str(tmp_path / ".lock.owner"), "'m'", str(tmp_path), timeout=1.5):
            pass
    levels = [r.levelno for r in caplog.records if "waiting for the build lock" in r.getMessage()]
    assert len(levels) >= 5
    assert levels[0] == logging.INFO  # the first ones, before WARN_AFTER
    assert 1 <= levels.count(logging.WARNING) <= 2  # at about 0.6 s and 1.2 s
