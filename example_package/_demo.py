"""Demo behind ``python -m example_package``: the first import, a warm load in a new process,
then spawn workers reusing the cache.

The workers' function lives here, not in __main__: spawn workers cannot
unpickle functions of a package's __main__ module. Point
CACHED_CPP_EXTENSION_BUILD_DIR at an empty folder to see a cold build.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys

CHILD = """
import json, time, torch
start = time.perf_counter()
import example_package
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "answer": example_package.Add42ToInteger(0)}))
"""


def _timed_child() -> dict[str, float]:
    output = subprocess.run([sys.executable, "-c", CHILD], check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return result


def _compile_count(root: str) -> int:
    """Compiles recorded in ninja's logs (one line per finished compile or link)."""
    count = 0
    for folder, _, files in os.walk(root):
        if ".ninja_log" in files:
            with open(os.path.join(folder, ".ninja_log")) as f:
                # columns: start, end, mtime, target, command hash
                count += sum(1 for line in f if len(line.split()) == 5 and line.split()[3].endswith(".o"))
    return count


def _worker(_: int) -> tuple[int, float]:
    # Unpickling this function already imported example_package in the worker: report that import's load.
    import example_package

    assert example_package.GetStaticInteger() == 42
    return os.getpid(), example_package.load_seconds * 1e3


def main() -> None:
    import example_package  # built (or loaded) by this process's first import, before main() ran

    root = os.environ["CACHED_CPP_EXTENSION_BUILD_DIR"]  # set by the library on first use
    print(f"cache root: {root}")
    print(f"1. import example_package in this process: {example_package.load_seconds:.3f} s "
          f"(compiles recorded in the cache: {_compile_count(root)})")
    warm = _timed_child()
    print(f"2. import in another new process (warm): {warm['seconds'] * 1e3:.1f} ms")
    before = _compile_count(root)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_worker, range(4))
    for pid, ms in results:
        print(f"3. spawn worker pid {pid}: import example_package took {ms:.1f} ms")
    print(f"   compiles during the workers: {_compile_count(root) - before}")


if __name__ == "__main__":
    main()
