"""example_package's kernels against their references, in one process (medians of repeated runs).

    .venv/bin/python bench/example_kernels.py [--repeat N] [--strings N] [--ids N] [--json PATH]

- hash_strings on N strings of 5 to 40 characters (ASCII, and a mix with
  accented letters) against a Python loop calling xxhash.xxh64_intdigest on
  each string's UTF-8 bytes. Target: at least 10x faster.
- hash_ids on N int64 ids against tensor.clone() of the same tensor, the
  memory-bandwidth reference. Target: at most 2x the clone time. On a GPU the
  same comparison runs on the device.
- hash_ids on N ids as a torch tensor against the same ids as a numpy array.
  Target: at most 1.2x (both results are allocated the same way).
Needs the test extras (xxhash); builds example_package into the usual cache.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import time
from collections.abc import Callable
from typing import Any

import torch


def seconds(function: Callable[[], Any], synchronize: bool = False) -> float:
    start = time.perf_counter()
    function()
    if synchronize:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def paired_medians(ours: Callable[[], Any], reference: Callable[[], Any], repeat: int,
                   synchronize: bool = False) -> tuple[float, float, float]:
    """Medians of ours, of the reference, and of reference/ours, timed in alternation.

    This 2-core VM's speed drifts by tens of percent over seconds; a ratio taken from back-to-back runs
    cancels most of that drift, where medians of two separate series do not.
    """
    ours_times, reference_times = [], []
    for _ in range(repeat):
        ours_times.append(seconds(ours, synchronize))
        reference_times.append(seconds(reference, synchronize))
    ratios = [r / o for o, r in zip(ours_times, reference_times, strict=True)]
    return statistics.median(ours_times), statistics.median(reference_times), statistics.median(ratios)


def random_strings(count: int, alphabet: str, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(alphabet, k=rng.randint(5, 40))) for _ in range(count)]


def bench_strings(ep: Any, count: int, repeat: int) -> list[dict[str, Any]]:
    import xxhash

    digest = xxhash.xxh64_intdigest
    rows = []
    for label, alphabet in (("ascii", string.ascii_letters + string.digits + " -_./"),
                            ("mixed", string.ascii_letters + string.digits + " -_./\u00e9\u00fc\u4e2d\U0001F600")):
        values = random_strings(count, alphabet)
        ours, reference, speedup = paired_medians(
            lambda v=values: ep.hash_strings(v, 1_000_003),
            lambda v=values: [digest(s.encode(), 0) % 1_000_003 for s in v], repeat)
        rows.append({"kernel": "hash_strings", "case": f"{count:,} {label} strings", "ours_ms": ours * 1e3,
                     "reference": "Python loop of xxhash.xxh64_intdigest", "reference_ms": reference * 1e3,
                     "speedup": speedup, "target": ">= 10x faster"})
    return rows


def bench_ids(ep: Any, count: int, repeat: int) -> list[dict[str, Any]]:
    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and ep.NO_CUDA_REASON is None else [])
    for device in devices:
        ids = torch.randint(-(2**63), 2**63 - 1, (count,), device=device)
        sync = device == "cuda"
        for num_buckets in (1 << 20, 1_000_003):
            ep.hash_ids(ids, num_buckets)  # warm-up: CUDA context, first-touch page faults
            ours, clone, speedup = paired_medians(lambda n=num_buckets, x=ids: ep.hash_ids(x, n), ids.clone,
                                                  repeat, sync)
            rows.append({"kernel": "hash_ids", "case": f"{count:,} ids on {device}, num_buckets={num_buckets}",
                         "ours_ms": ours * 1e3, "reference": "tensor.clone()", "reference_ms": clone * 1e3,
                         "ratio_to_clone": 1 / speedup, "target": "<= 2x clone"})
    return [*rows, _tensor_against_array(ep, count, repeat)]


def _tensor_against_array(ep: Any, count: int, repeat: int) -> dict[str, Any]:
    """The same ids as a torch tensor and as a numpy array: the result's allocation must not tell them apart
    (torch.empty's pages once faulted in one by one, doubling the tensor's time)."""
    ids = torch.randint(-(2**63), 2**63 - 1, (count,))
    array = ids.numpy()
    ep.hash_ids(ids, 1_000_003)
    ep.hash_ids(array, 1_000_003)
    tensor_time, array_time, speedup = paired_medians(lambda: ep.hash_ids(ids, 1_000_003),
                                                      lambda: ep.hash_ids(array, 1_000_003), repeat)
    return {"kernel": "hash_ids", "case": f"{count:,} ids on cpu as a torch tensor", "ours_ms": tensor_time * 1e3,
            "reference": "the same ids as a numpy array", "reference_ms": array_time * 1e3,
            "ratio_to_numpy": 1 / speedup, "target": "<= 1.2x numpy", "met": 1 / speedup <= 1.2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--strings", type=int, default=1_000_000)
    parser.add_argument("--ids", type=int, default=10_000_000)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()

    import example_package as ep

    rows = bench_strings(ep, args.strings, args.repeat) + bench_ids(ep, args.ids, args.repeat)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
          f"medians of {args.repeat} alternating runs")
    for row in rows:
        figure = (f"{row['speedup']:.1f}x faster" if "speedup" in row else f"{row['ratio_to_clone']:.2f}x clone"
                  if "ratio_to_clone" in row else f"{row['ratio_to_numpy']:.2f}x numpy")
        print(f"{row['kernel']:13s} {row['case']:45s} {row['ours_ms']:9.2f} ms | {row['reference']}: "
              f"{row['reference_ms']:9.2f} ms -> {figure} (target {row['target']})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
