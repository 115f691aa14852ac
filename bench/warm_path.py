"""The warm call alone, against its floor, in fresh processes: ``python -m bench.warm_path [--repeat N]``.

Builds the bench's 8-source C module once into a temporary cache, then alternates fresh processes
that (a) call ``cached_load_torch_cpp_extension`` on the warm cache and (b) import the same artifact
with importlib (the floor: dlopen plus module init). torch is imported before the clock starts in
both. Prints the medians and their ratio; ``--json`` prints them as one JSON line. Only the public
API is used, so the same script measures an older checkout (put it first on PYTHONPATH) for a
before/after comparison in the same conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from ._modules import write_module

_CALL = """
import json, sys, time
import torch
import cpp_extension_tools as c
sources = json.loads(sys.argv[1])
start = time.perf_counter()
m = c.cached_load_torch_cpp_extension("bench_ext", sources, extra_include_paths=[sys.argv[2]])
end = time.perf_counter()
assert m.f0() >= 1000
print(json.dumps({"call_s": end - start, "file": m.__file__}))
"""

_FLOOR = """
import importlib.machinery, importlib.util, json, sys, time
import torch
start = time.perf_counter()
loader = importlib.machinery.ExtensionFileLoader("bench_ext", sys.argv[1])
spec = importlib.util.spec_from_file_location("bench_ext", sys.argv[1], loader=loader)
module = importlib.util.module_from_spec(spec)
loader.exec_module(module)
end = time.perf_counter()
assert module.f0() >= 1000
print(json.dumps({"call_s": end - start}))
"""


def _run(code: str, *args: str, env: dict[str, str]) -> dict[str, float | str]:
    # cwd: the scratch folder, so that PYTHONPATH (not this checkout) decides which library is measured.
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env, capture_output=True,
                         text=True, check=True, cwd=env["CACHED_CPP_EXTENSION_BUILD_DIR"]).stdout
    result: dict[str, float | str] = json.loads(out.strip().splitlines()[-1])
    return result


def measure(repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="cet_warm_") as scratch:
        files = write_module(Path(scratch) / "src", 8)
        env = dict(os.environ, CACHED_CPP_EXTENSION_BUILD_DIR=str(Path(scratch) / "cache"))
        os.makedirs(env["CACHED_CPP_EXTENSION_BUILD_DIR"], mode=0o700)
        args = (json.dumps(files.sources), str(files.folder))
        built = _run(_CALL, *args, env=env)  # the cold build
        library = str(built["file"])
        for _ in range(2):  # page cache and .pyc writes settle
            _run(_CALL, *args, env=env)
            _run(_FLOOR, library, env=env)
        ours, floor = [], []
        for _ in range(repeat):  # interleaved, so drift hits both alike
            ours.append(float(_run(_CALL, *args, env=env)["call_s"]) * 1e3)
            floor.append(float(_run(_FLOOR, library, env=env)["call_s"]) * 1e3)
    return {"warm_call_ms": statistics.median(ours), "floor_ms": statistics.median(floor),
            "ratio": statistics.median(ours) / statistics.median(floor), "repeat": repeat}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.warm_path", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=21, help="fresh processes per side (default 21)")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of a sentence")
    args = parser.parse_args(argv)
    result = measure(args.repeat)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"warm call {result['warm_call_ms']:.3f} ms, floor (importlib of the artifact) "
              f"{result['floor_ms']:.3f} ms, ratio {result['ratio']:.2f} (medians of {args.repeat})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
