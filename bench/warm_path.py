"""The warm call alone, against its floor, in fresh processes: ``python -m bench.warm_path [--repeat N]``.

Builds the bench's 8-source C module (``--sources N``: N sources) once into a temporary cache, then
alternates fresh processes that (a) call ``cached_load_torch_cpp_extension`` on the warm cache and
(b) import the same artifact with importlib (the floor: dlopen plus module init). torch is imported
before the clock starts in both. Prints the medians and their ratio; ``--json`` prints them as one
JSON line. Only the public API is used, so the same script measures an older checkout (put it first
on PYTHONPATH) for a before/after comparison in the same conditions.

``--breakdown`` times the warm call's phases instead, with the library's internal functions (so it
follows their names, not the public API): in each fresh process every phase runs once in order (the
first call's cost, with its one-time work: lazy imports, per-process caches, the dlopen), then each
phase alone many times (its steady cost). Prints the medians over the processes of both, in µs.
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


# The warm call's phases, in its order, with the library's internal functions; "load" (the trusted open, the
# binary's check, the dlopen and the use stamp) runs once per process: a module loads once.
_BREAKDOWN = """
import json, os, statistics, sys, time
import torch
from cpp_extension_tools import _api, _arguments
from cpp_extension_tools import _key as _config
from cpp_extension_tools._cache import hashing as _hashing, root as _root, store as _store, trust as _trust
from cpp_extension_tools import _loader
from cpp_extension_tools._cache.manifest import MANIFEST_NAME, read_manifest
sources, include, iterations = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
state = {}

def arguments():
    state["arguments"] = _arguments.validated_request("bench_ext", sources, [include], None, None, (), False, None)
def key():
    state["config"] = _config.make_config(state["arguments"])
def root():
    state["store"] = _store.ModuleStore(_root.resolve_root(None), "bench_ext")
def manifest():
    store, config = state["store"], state["config"]
    state["folder"] = os.path.join(store.artifacts_folder, _store.read_hint(store._latest_path(config)))
    state["manifest"] = read_manifest(os.path.join(state["folder"], MANIFEST_NAME))
def stats():
    m = state["manifest"]
    assert all(_hashing.file_matches(r) for r in m.inputs) and not m.changed_folder() and not m.changed_tool()
def find():
    state["found"], _ = state["store"].find(state["config"])
def load():
    state["module"] = _api._load(state["store"], state["config"], state["found"])
def trust():
    store = state["store"]
    os.close(_trust.open_trusted(store.root, store.library_path(state["found"])))
def note_use():
    state["store"].note_use(state["found"])
def memo_hit():
    assert _loader.memo_get(state["store"].folder, state["config"].key) is not None
def public_call():
    _api.cached_load_torch_cpp_extension("bench_ext", sources, extra_include_paths=[include])

def timed(phase):
    start = time.perf_counter()
    phase()
    return (time.perf_counter() - start) * 1e6

first = {name: timed(phase) for name, phase in [
    ("arguments", arguments), ("key", key), ("root", root), ("hint + manifest read", manifest),
    ("stats of inputs, folders, tools", stats), ("store.find", find), ("load", load)]}
steady = {name: statistics.median(timed(phase) for _ in range(iterations)) for name, phase in [
    ("arguments", arguments), ("key", key), ("root", root), ("hint + manifest read", manifest),
    ("stats of inputs, folders, tools", stats), ("store.find", find), ("trust", trust), ("note use", note_use),
    ("memo hit", memo_hit), ("public call (memo hit)", public_call)]}
print(json.dumps({"first_us": first, "steady_us": steady}))
"""


# --inline: cached_load_inline's warm call against the native warm call of the same artifact (its generated
# main.cpp), each in fresh processes; a C++ module without torch's headers, so that its build takes a second.
_INLINE_SOURCE = r"""
#include <Python.h>
#define CONCAT_(a, b) a##b
#define CONCAT(a, b) CONCAT_(a, b)
static PyObject *f0(PyObject *, PyObject *) { return PyLong_FromLong(1000); }
static PyMethodDef methods[] = {{"f0", f0, METH_NOARGS, nullptr}, {nullptr, nullptr, 0, nullptr}};
static PyModuleDef def = {PyModuleDef_HEAD_INIT, "bench_inline", nullptr, -1, methods};
PyMODINIT_FUNC CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&def); }
"""

_INLINE_CALL = """
import json, sys, time
import torch
import cpp_extension_tools as c
source = sys.argv[1]
start = time.perf_counter()
load_inline = c.cached_load_inline  # a lazy export: its first use imports cpp_extension_tools._inline
imported = time.perf_counter()
m = load_inline("bench_inline", source, no_implicit_headers=True)
end = time.perf_counter()
again = load_inline("bench_inline", source, no_implicit_headers=True)
second = time.perf_counter() - end
assert m.f0() == 1000 and again is m
print(json.dumps({"call_s": end - start, "import_s": imported - start, "second_s": second, "file": m.__file__}))
"""

_INLINE_NATIVE_CALL = """
import json, sys, time
import torch
import cpp_extension_tools as c
start = time.perf_counter()
m = c.cached_load_torch_cpp_extension("bench_inline", [sys.argv[1]])
end = time.perf_counter()
again = c.cached_load_torch_cpp_extension("bench_inline", [sys.argv[1]])
second = time.perf_counter() - end
assert m.f0() == 1000 and again is m
print(json.dumps({"call_s": end - start, "second_s": second}))
"""


def measure_inline(repeat: int) -> dict[str, float]:
    """Medians (ms) of cached_load_inline's warm call and of the native warm call of the same artifact."""
    import glob

    with tempfile.TemporaryDirectory(prefix="cet_warm_") as scratch:
        env = dict(os.environ, CACHED_CPP_EXTENSION_BUILD_DIR=str(Path(scratch) / "cache"))
        os.makedirs(env["CACHED_CPP_EXTENSION_BUILD_DIR"], mode=0o700)
        _run(_INLINE_CALL, _INLINE_SOURCE, env=env)  # the cold build
        [generated] = glob.glob(os.path.join(env["CACHED_CPP_EXTENSION_BUILD_DIR"], "bench_inline", "*", "*",
                                             "main.cpp"))
        for _ in range(2):
            _run(_INLINE_CALL, _INLINE_SOURCE, env=env)
            _run(_INLINE_NATIVE_CALL, generated, env=env)
        inline, native = [], []
        for _ in range(repeat):  # interleaved, so drift hits both alike
            inline.append(_run(_INLINE_CALL, _INLINE_SOURCE, env=env))
            native.append(_run(_INLINE_NATIVE_CALL, generated, env=env))

    def median_ms(runs: list[dict[str, float | str]], field: str) -> float:
        return statistics.median(float(run[field]) for run in runs) * 1e3

    result = {"inline_warm_call_ms": median_ms(inline, "call_s"), "native_warm_call_ms": median_ms(native, "call_s"),
              "inline_import_ms": median_ms(inline, "import_s"), "inline_second_call_ms": median_ms(inline, "second_s"),
              "native_second_call_ms": median_ms(native, "second_s"), "repeat": repeat}
    result["difference_ms"] = result["inline_warm_call_ms"] - result["native_warm_call_ms"]
    result["second_call_difference_ms"] = result["inline_second_call_ms"] - result["native_second_call_ms"]
    return result


def _run(code: str, *args: str, env: dict[str, str]) -> dict[str, float | str]:
    # cwd: the scratch folder, so that PYTHONPATH (not this checkout) decides which library is measured.
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env, capture_output=True,
                         text=True, check=True, cwd=env["CACHED_CPP_EXTENSION_BUILD_DIR"]).stdout
    result: dict[str, float | str] = json.loads(out.strip().splitlines()[-1])
    return result


def measure(repeat: int, sources: int = 8) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="cet_warm_") as scratch:
        files = write_module(Path(scratch) / "src", sources)
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
            "ratio": statistics.median(ours) / statistics.median(floor), "repeat": repeat, "sources": sources}


def breakdown(repeat: int, iterations: int, sources: int = 8) -> dict[str, dict[str, float]]:
    """Median µs per phase: {"first_us": {phase: first run}, "steady_us": {phase: steady run}}."""
    with tempfile.TemporaryDirectory(prefix="cet_warm_") as scratch:
        files = write_module(Path(scratch) / "src", sources)
        env = dict(os.environ, CACHED_CPP_EXTENSION_BUILD_DIR=str(Path(scratch) / "cache"))
        os.makedirs(env["CACHED_CPP_EXTENSION_BUILD_DIR"], mode=0o700)
        args = (json.dumps(files.sources), str(files.folder))
        _run(_CALL, *args, env=env)  # the cold build
        _run_phases(args, 10, env)  # page cache and .pyc writes settle
        runs = [_run_phases(args, iterations, env) for _ in range(repeat)]
    return {part: {phase: statistics.median(run[part][phase] for run in runs) for phase in runs[0][part]}
            for part in ("first_us", "steady_us")}


def _run_phases(args: tuple[str, str], iterations: int, env: dict[str, str]) -> dict[str, dict[str, float]]:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_BREAKDOWN), *args, str(iterations)], env=env,
                         capture_output=True, text=True, check=True, cwd=env["CACHED_CPP_EXTENSION_BUILD_DIR"]).stdout
    result: dict[str, dict[str, float]] = json.loads(out.strip().splitlines()[-1])
    return result


def _print_breakdown(result: dict[str, dict[str, float]], repeat: int, iterations: int) -> None:
    first, steady = result["first_us"], result["steady_us"]
    print(f"warm call phases, µs (medians of {repeat} fresh processes; steady: median of {iterations} runs)")
    print(f"{'phase':<34}{'first call':>12}{'steady':>10}")
    for phase in dict.fromkeys([*first, *steady]):
        cells = [f"{table[phase]:.1f}" if phase in table else "-" for table in (first, steady)]
        print(f"{phase:<34}{cells[0]:>12}{cells[1]:>10}")
    print("first call = arguments + key + root + store.find (its hint + manifest read, and stats, run once before "
          "it) + load (trust, the binary's check, dlopen and init, note use)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.warm_path", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=21, help="fresh processes per side (default 21)")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of a sentence")
    parser.add_argument("--breakdown", action="store_true",
                        help="time each phase of the warm call with the library's internal functions")
    parser.add_argument("--iterations", type=int, default=2000, help="steady runs per phase (--breakdown)")
    parser.add_argument("--sources", type=int, default=8, help="sources of the module (default 8)")
    parser.add_argument("--inline", action="store_true",
                        help="cached_load_inline's warm call against the native warm call of the same artifact")
    args = parser.parse_args(argv)
    if args.inline:
        inline = measure_inline(args.repeat)
        print(json.dumps(inline) if args.json else
              f"cached_load_inline warm call {inline['inline_warm_call_ms']:.3f} ms, native warm call of the same "
              f"artifact {inline['native_warm_call_ms']:.3f} ms, difference {inline['difference_ms']:.3f} ms "
              f"(the inline call includes importing its module: {inline['inline_import_ms']:.3f} ms); a second "
              f"call in the same process {inline['inline_second_call_ms']:.3f} vs {inline['native_second_call_ms']:.3f}"
              f" ms, difference {inline['second_call_difference_ms']:.3f} ms (medians of {args.repeat})")
        return 0
    if args.breakdown:
        phases = breakdown(args.repeat, args.iterations, args.sources)
        if args.json:
            print(json.dumps(phases))
        else:
            _print_breakdown(phases, args.repeat, args.iterations)
        return 0
    result = measure(args.repeat, args.sources)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"warm call {result['warm_call_ms']:.3f} ms, floor (importlib of the artifact) "
              f"{result['floor_ms']:.3f} ms, ratio {result['ratio']:.2f} (medians of {args.repeat}"
              f"{'' if args.sources == 8 else f'; {args.sources} sources'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
