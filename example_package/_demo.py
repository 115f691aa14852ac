"""Demo behind ``python -m example_package``: the first import (a cold build on an empty cache),
feature hashing throughput, a warm load in a new process, then a DataLoader whose spawn workers
hash batches and reuse the cache.

The workers' dataset lives here, not in __main__: spawn workers cannot
unpickle objects of a package's __main__ module. Point
CACHED_CPP_EXTENSION_BUILD_DIR at an empty folder to see a cold build.
"""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
import sys
import time
import warnings
from typing import Any

import torch

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


class _BatchesOfQueries(torch.utils.data.Dataset[dict[str, Any]]):
    """Batches of generated query strings, hashed in the worker that loads them."""

    def __init__(self, batches: int, batch_size: int) -> None:
        self.batches, self.batch_size = batches, batch_size

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, index: int) -> dict[str, Any]:
        # Unpickling this dataset in a spawn worker imported example_package there: load_seconds is that import's.
        import example_package

        queries = [f"query {index} {k}" for k in range(self.batch_size)]
        return {"pid": os.getpid(), "load_ms": example_package.load_seconds * 1e3,
                "buckets": example_package.hash_strings(queries, 1 << 20)}


def _random_strings(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)  # noqa: S311  # demo data, not secrets
    alphabet = string.ascii_letters + string.digits + " -_./\u00e9\u00fc"
    return ["".join(rng.choices(alphabet, k=rng.randint(5, 40))) for _ in range(count)]


def _throughput(example_package: Any) -> None:
    strings = _random_strings(1_000_000)
    start = time.perf_counter()
    example_package.hash_strings(strings, 1_000_003)
    seconds = time.perf_counter() - start
    print(f"2. hash_strings: 1,000,000 strings in {seconds * 1e3:.1f} ms ({1 / seconds:.1f} M strings/s)")
    ids = torch.randint(-(2**63), 2**63 - 1, (10_000_000,))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and example_package.NO_CUDA_REASON is None else [])
    for device in devices:
        on_device = ids.to(device)
        example_package.hash_ids(on_device, 1_000_003)  # warm-up (CUDA context, page faults)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        example_package.hash_ids(on_device, 1_000_003)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        print(f"   hash_ids on {device}: 10,000,000 ids in {seconds * 1e3:.1f} ms ({10 / seconds:.0f} M ids/s)")
    if example_package.NO_CUDA_REASON is not None:
        print(f"   (no CUDA kernel: {example_package.NO_CUDA_REASON})")


def main() -> None:
    import example_package  # built (or loaded) by this process's first import, before main() ran

    root = os.environ["CACHED_CPP_EXTENSION_BUILD_DIR"]  # set by the library on first use
    print(f"cache root: {root}")
    print(f"1. import example_package in this process: {example_package.load_seconds:.3f} s "
          f"(compiles recorded in the cache: {_compile_count(root)})")
    _throughput(example_package)
    warm = _timed_child()
    print(f"3. import example_package in a new process (warm): {warm['seconds'] * 1e3:.1f} ms")
    before = _compile_count(root)
    # Four workers on purpose, even on a 2-core machine: the point is that none of them compiles.
    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
    loader = torch.utils.data.DataLoader(_BatchesOfQueries(batches=16, batch_size=10_000), batch_size=None,
                                         num_workers=4, multiprocessing_context="spawn")
    load_ms: dict[int, float] = {}
    hashed = 0
    for batch in loader:
        load_ms[batch["pid"]] = batch["load_ms"]
        hashed += len(batch["buckets"])
    print(f"4. DataLoader, 4 spawn workers: {hashed:,} strings hashed; "
          f"compiles during the workers: {_compile_count(root) - before}")
    for pid, ms in sorted(load_ms.items()):
        print(f"   worker pid {pid}: import example_package took {ms:.1f} ms")


if __name__ == "__main__":
    main()
