"""One call's promises: one deadline for all its waiting, and errors that say what really failed."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CompilerLog, last_json, run_python, write_module

NAME = "adv_calls"

_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_threads_waiting_for_one_build_share_the_calls_deadline(tmp_path: Path, cache_root: Path,
                                                                compilers: CompilerLog) -> None:
    """Four threads of one process wait for a build another process holds: together no longer than
    one timeout (each waited a full timeout after the previous one gave up, 4x in all)."""
    sources = write_module(tmp_path / "src")
    (cache_root / NAME).mkdir(parents=True, mode=0o700)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(cache_root / NAME / ".lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = run_python(f"""
            import json, threading, time
            import torch  # before the clock: importing it is not waiting
            import cpp_extension_tools as c
            outcomes = []
            def call():
                try:
                    c.cached_load_torch_cpp_extension({NAME!r}, {sources!r})
                    outcomes.append("loaded")
                except c.LockTimeoutError as error:
                    outcomes.append("timeout")
            started = time.monotonic()
            threads = [threading.Thread(target=call) for _ in range(4)]
            for t in threads: t.start()
            for t in threads: t.join()
            print(json.dumps({{"outcomes": outcomes, "elapsed": time.monotonic() - started}}))
            """, env={"CACHED_CPP_EXTENSION_LOCK_TIMEOUT": "2"}, timeout=120)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    report = last_json(result.stdout)
    assert isinstance(report, dict)
    assert report["outcomes"] == ["timeout"] * 4
    assert report["elapsed"] < 3.5, f"4 threads waited {report['elapsed']:.1f} s for a 2 s deadline"
    assert compilers.compiles() == []


@pytest.mark.parametrize(("code", "filename", "is_cache"), [
    (errno.EACCES, "/home/user/project/csrc/kernel.h", False),  # the user's file: not the cache's problem
    (errno.EROFS, "/opt/toolchain/bin/cc", False),
    (errno.EACCES, "{root}/m/builds/k/build.log", True),
    (errno.EACCES, None, True),  # nothing named: the cache is the only thing being written
    (errno.ENOSPC, None, True),  # a full disk often names no file
    (errno.ENOSPC, "/tmp/ccXYZ.s", True),  # the compiler's temporary file on the same full disk
    (errno.ENOENT, "/home/user/project/csrc/kernel.h", False),
])
def test_only_errors_about_the_cache_are_called_cache_write_errors(tmp_path: Path, code: int, filename: str | None,
                                                                   is_cache: bool) -> None:
    from cpp_extension_tools._errors import is_cache_write_error

    root = str(tmp_path / "cache")
    named = filename.format(root=root) if filename else None
    assert is_cache_write_error(OSError(code, os.strerror(code), named), root) is is_cache
