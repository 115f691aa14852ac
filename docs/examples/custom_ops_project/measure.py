"""The migration page's numbers: a warm load in a fresh process and in 8 spawn workers, per loader.

Run from anywhere with the library importable: ``python docs/examples/custom_ops_project/measure.py``.
Each loader builds once first (not measured); torch's load and the patch_torch() drop-in share torch's
extensions folder, as they do in a project that migrates.
"""

import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FRESH_RUNS = 7
POOL_RUNS = 3
WORKERS = 8

_LOAD_IN_PROCESS = """
import time, torch
start = time.perf_counter()
import my_ops
my_ops.get_plugin("fused_bias_act")
print(time.perf_counter() - start)
"""


def import_torch():
    """The pool's initializer: each worker imports torch before its task (the same for every loader)."""
    import torch  # noqa: F401


def worker_load_seconds(_):
    """The worker's time to import my_ops and load the op; None for a later task of the same worker."""
    import torch

    if "my_ops" in sys.modules:
        return None
    start = time.perf_counter()
    import my_ops

    my_ops.get_plugin("fused_bias_act")
    elapsed = time.perf_counter() - start
    assert float(my_ops.fused_bias_act(torch.ones(4, 3), torch.zeros(3)).sum()) == 12.0
    return elapsed


def _environment(loader, root):
    env = dict(os.environ, MY_OPS_LOADER=loader, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["TORCH_EXTENSIONS_DIR"] = os.path.join(root, "torch_extensions")
    env["CACHED_CPP_EXTENSION_BUILD_DIR"] = os.path.join(root, "cached")
    if loader != "native":
        del env["CACHED_CPP_EXTENSION_BUILD_DIR"]  # the drop-in then uses torch's folder, as torch does
    return env


def _fresh_process_seconds(env):
    out = subprocess.run([sys.executable, "-c", _LOAD_IN_PROCESS], env=env, capture_output=True, text=True,
                         check=True).stdout
    return float(out.split()[-1])


def _pool_seconds(env):
    """(wall time from starting 8 spawn workers to all results, median load time inside a worker)."""
    code = (f"import sys; sys.path.insert(0, {HERE!r}); import measure, multiprocessing, time, statistics\n"
            "start = time.perf_counter()\n"
            f"with multiprocessing.get_context('spawn').Pool({WORKERS}, measure.import_torch) as pool:\n"
            f"    loads = pool.map(measure.worker_load_seconds, range({WORKERS}), chunksize=1)\n"
            "print(time.perf_counter() - start, statistics.median(t for t in loads if t is not None))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    wall, load = out.split()[-2:]
    return float(wall), float(load)


def measure(loader, root):
    env = _environment(loader, root)
    start = time.perf_counter()
    _fresh_process_seconds(env)  # the build, once
    cold = time.perf_counter() - start
    fresh = statistics.median(_fresh_process_seconds(env) for _ in range(FRESH_RUNS))
    pools = [_pool_seconds(env) for _ in range(POOL_RUNS)]
    return {"loader": loader, "first_run_s": round(cold, 1), "warm_fresh_process_ms": round(fresh * 1e3, 1),
            "pool8_wall_s": round(statistics.median(p[0] for p in pools), 2),
            "pool8_worker_load_ms": round(statistics.median(p[1] for p in pools) * 1e3, 1)}


def main():
    multiprocessing.set_start_method("spawn")
    with tempfile.TemporaryDirectory() as scratch:
        root = os.environ.get("MEASURE_ROOT", scratch)  # a kept root skips the builds of an earlier run
        for loader in sys.argv[1:] or ["torch", "patch", "native"]:
            print(json.dumps(measure(loader, root)), flush=True)


if __name__ == "__main__":
    main()
