"""Demo behind ``python -m example_package``: how this process got the C module (built now, loaded
from the cache, or loaded prebuilt from a wheel), feature hashing throughput, a warm load in a new
process, then a DataLoader whose spawn workers hash batches and reuse the cache.

The workers' dataset lives here, not in __main__: spawn workers cannot
unpickle objects of a package's __main__ module. Point
CACHED_CPP_EXTENSION_BUILD_DIR at an empty folder to see a cold build.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import string
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

CHILD = """
import json, time, torch
start = time.perf_counter()
import example_package
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "answer": example_package.Add42ToInteger(0)}))
"""


@dataclass(frozen=True)
class LoadReport:
    """How this process's first ``import example_package`` got its C module."""

    kind: str  # "built" (compiled during this import), "cached" or "prebuilt"
    binary: str  # the file that was loaded
    module_folder: str | None  # <cache root>/<module name>; None for a prebuilt binary
    build_seconds: float  # the build's duration as its manifest records it; 0 for a prebuilt binary
    compiles: int  # objects compiled during this import

    @property
    def cache_root(self) -> str | None:
        return None if self.module_folder is None else os.path.dirname(self.module_folder)


def how_it_was_loaded(package: ModuleType) -> LoadReport:
    """Prebuilt when the binary sits in the package's prebuilt/ folder; otherwise built now when its
    artifact's manifest (<root>/<name>/artifacts/<id>/manifest.json) was written after the import began."""
    binary = os.path.abspath(package._extension.__file__)
    prebuilt = os.path.join(os.path.dirname(os.path.abspath(package.__file__)), "prebuilt")
    if os.path.dirname(binary) == prebuilt:
        return LoadReport("prebuilt", binary, None, 0.0, 0)
    artifact = os.path.dirname(binary)
    module_folder = os.path.dirname(os.path.dirname(artifact))
    with open(os.path.join(artifact, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    started = package.load_started_at
    kind = "built" if manifest["created_at"] >= started else "cached"
    return LoadReport(kind, binary, module_folder, float(manifest["build_seconds"]),
                      compiles_since(module_folder, started))


def compiles_since(module_folder: str, since: float) -> int:
    """Objects (.o files) in the module's build folders written at or after ``since`` (a time.time())."""
    count = 0
    for folder, _, files in os.walk(os.path.join(module_folder, "builds")):
        for name in files:
            if name.endswith(".o") and os.stat(os.path.join(folder, name)).st_mtime >= since:
                count += 1
    return count


def _describe(report: LoadReport, seconds: float) -> list[str]:
    if report.kind == "prebuilt":
        return [f"1. import example_package: {seconds * 1e3:.1f} ms, loaded the prebuilt binary shipped in the "
                f"wheel, with no compiler and no cache (compiles this run: 0)",
                f"   binary: {report.binary}"]
    if report.kind == "built":
        first = (f"1. import example_package: {seconds:.2f} s, built the C module now "
                 f"(build {report.build_seconds:.1f} s; compiles this run: {report.compiles})")
    else:
        first = (f"1. import example_package: {seconds * 1e3:.1f} ms, loaded from the cache "
                 f"(built earlier in {report.build_seconds:.1f} s; compiles this run: {report.compiles})")
    return [first, f"   cache: {report.cache_root} (the next run loads from it; to build again: "
                   f"CACHED_CPP_EXTENSION_BUILD_DIR={shlex.quote(str(report.cache_root))} "
                   "cpp-extension-tools clear example_package_ext)"]


def _timed_child() -> dict[str, float]:
    output = subprocess.run([sys.executable, "-c", CHILD], check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return result


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
                "kind": how_it_was_loaded(example_package).kind,
                "buckets": example_package.hash_strings(queries, 1 << 20)}


def _random_strings(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)  # noqa: S311  # demo data, not secrets
    alphabet = string.ascii_letters + string.digits + " -_./\u00e9\u00fc"
    return ["".join(rng.choices(alphabet, k=rng.randint(5, 40))) for _ in range(count)]


def _hash_ids_timing(package: ModuleType, ids: torch.Tensor, device: str) -> float:
    on_device = ids.to(device)
    package.hash_ids(on_device, 1_000_003)  # warm-up (CUDA context, page faults)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    package.hash_ids(on_device, 1_000_003)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _throughput(package: ModuleType) -> None:
    print("2. hashing: generating 1,000,000 random strings (a few seconds of Python)...", flush=True)
    strings = _random_strings(1_000_000)
    start = time.perf_counter()
    package.hash_strings(strings, 1_000_003)
    seconds = time.perf_counter() - start
    print(f"   hash_strings: 1,000,000 strings in {seconds * 1e3:.1f} ms ({1 / seconds:.1f} M strings/s)")
    ids = torch.randint(-(2**63), 2**63 - 1, (10_000_000,))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and package.NO_CUDA_REASON is None else [])
    for device in devices:
        seconds = _hash_ids_timing(package, ids, device)
        print(f"   hash_ids on {device}: 10,000,000 ids in {seconds * 1e3:.1f} ms ({10 / seconds:.0f} M ids/s)")
    if package.NO_CUDA_REASON is not None:
        print(f"   (no CUDA kernel: {package.NO_CUDA_REASON})")


def _data_loader(report: LoadReport) -> None:
    print("4. DataLoader with 4 spawn workers: each starts Python and imports torch "
          "(several seconds on 2 cores)...", flush=True)
    since = time.time()
    # Four workers on purpose, even on a 2-core machine: the point is that none of them compiles.
    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
    loader = torch.utils.data.DataLoader(_BatchesOfQueries(batches=16, batch_size=10_000), batch_size=None,
                                         num_workers=4, multiprocessing_context="spawn")
    workers: dict[int, tuple[float, str]] = {}
    hashed = 0
    for batch in loader:
        if not workers:
            print(f"   the first batch arrived after {time.time() - since:.1f} s", flush=True)
        workers[batch["pid"]] = (batch["load_ms"], batch["kind"])
        hashed += len(batch["buckets"])
    compiles = 0 if report.module_folder is None else compiles_since(report.module_folder, since)
    print(f"   {hashed:,} strings hashed; compiles during the workers: {compiles}")
    for pid, (ms, kind) in sorted(workers.items()):
        where = "prebuilt binary" if kind == "prebuilt" else "from the cache" if kind == "cached" else "built"
        print(f"   worker pid {pid}: import example_package took {ms:.1f} ms ({where})")


def main() -> None:
    import example_package  # built (or loaded) by this process's first import, before main() ran

    report = how_it_was_loaded(example_package)
    for line in _describe(report, example_package.load_seconds):
        print(line)
    _throughput(example_package)
    print("3. import example_package in a new process...", flush=True)
    warm = _timed_child()
    source = "the prebuilt binary" if report.kind == "prebuilt" else "from the cache"
    print(f"   {warm['seconds'] * 1e3:.1f} ms ({source}, torch already imported)")
    _data_loader(report)


if __name__ == "__main__":
    main()
