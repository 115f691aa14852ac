"""Warm-load benchmark: cached_load_torch_cpp_extension against torch.utils.cpp_extension.load.

Generates an 8-source C extension (CPython C API only) in a temporary folder,
builds it once with each tool, then loads the already-built module in fresh
processes and times only the load. Run from the repository root:

    .venv/bin/python bench/warm_load.py [--repeat N] [--json PATH]

Each measuring process imports torch first (untimed, as any user of a torch
extension has), then times:
  ours:  ``import cpp_extension_tools`` + ``cached_load_torch_cpp_extension(...)``
  torch: ``import torch.utils.cpp_extension`` + ``load(...)``
and also the load call alone, without the import.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
N_FUNCTIONS = 8
DEFAULT_REPEAT = 7
MIN_REPEAT = 5
OURS_NAME = "warm_bench_ours"
TORCH_NAME = "warm_bench_torch"
HEADER_NAME = "warm_bench.h"
RESULT_BASE = 1000  # f<k>() returns RESULT_BASE + k
TOOLS = ("ours", "torch")

# The code run by each fresh process. Only sys and time are imported before
# the timer starts (besides torch), so the import cost of the tool measured is
# not hidden by modules this benchmark would otherwise have loaded first.
CHILD_CODE = r"""
import sys, time
import torch  # not timed: a process loading a torch extension has imported torch
spec = __import__("json").loads(sys.argv[1])
kwargs = dict(extra_include_paths=spec["includes"], build_directory=spec["build_directory"])
start = time.perf_counter()
if spec["tool"] == "ours":
    import cpp_extension_tools
    imported = time.perf_counter()
    module = cpp_extension_tools.cached_load_torch_cpp_extension(spec["name"], spec["sources"], **kwargs)
else:
    import torch.utils.cpp_extension
    imported = time.perf_counter()
    module = torch.utils.cpp_extension.load(spec["name"], spec["sources"], **kwargs)
end = time.perf_counter()
got = [getattr(module, f"f{k}")() for k in range(spec["n_functions"])]
want = [spec["result_base"] + k for k in range(spec["n_functions"])]
if got != want:
    sys.exit(f"{spec['tool']}: module returned {got}, expected {want}")
import json
print(json.dumps({"total_s": end - start, "call_s": end - imported}))
"""


# -- the generated C module ----------------------------------------------------

def header_text() -> str:
    declarations = "\n".join(f"PyObject *warm_bench_f{k}(PyObject *self, PyObject *unused);"
                             for k in range(N_FUNCTIONS))
    return f"""#ifndef WARM_BENCH_H
#define WARM_BENCH_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#ifdef __cplusplus
extern "C" {{
#endif
{declarations}
#ifdef __cplusplus
}}
#endif
#endif
"""


def function_text(k: int) -> str:
    # Valid C and C++: torch's load() compiles .c files as C++, ours as C.
    return f"""#include "{HEADER_NAME}"

PyObject *warm_bench_f{k}(PyObject *self, PyObject *unused)
{{
    (void)self;
    (void)unused;
    return PyLong_FromLong({RESULT_BASE + k});
}}
"""


def init_text() -> str:
    methods = "\n".join(f'    {{"f{k}", warm_bench_f{k}, METH_NOARGS, "returns {RESULT_BASE + k}"}},'
                        for k in range(N_FUNCTIONS))
    return f"""
#ifndef TORCH_EXTENSION_NAME
#error "TORCH_EXTENSION_NAME is not defined"
#endif
#define WARM_BENCH_CONCAT_(a, b) a##b
#define WARM_BENCH_CONCAT(a, b) WARM_BENCH_CONCAT_(a, b)
#define WARM_BENCH_STR_(x) #x
#define WARM_BENCH_STR(x) WARM_BENCH_STR_(x)

static PyMethodDef warm_bench_methods[] = {{
{methods}
    {{NULL, NULL, 0, NULL}}
}};

static struct PyModuleDef warm_bench_module = {{
    PyModuleDef_HEAD_INIT, WARM_BENCH_STR(TORCH_EXTENSION_NAME), NULL, -1, warm_bench_methods,
    NULL, NULL, NULL, NULL
}};

/* PyMODINIT_FUNC declares the function extern "C" when compiled as C++. */
PyMODINIT_FUNC WARM_BENCH_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void)
{{
    return PyModule_Create(&warm_bench_module);
}}
"""


def write_sources(folder: Path) -> list[str]:
    """Write the header and the 8 sources; f0.c also holds the module init."""
    folder.mkdir(parents=True)
    (folder / HEADER_NAME).write_text(header_text())
    sources = []
    for k in range(N_FUNCTIONS):
        path = folder / f"f{k}.c"
        path.write_text(function_text(k) + (init_text() if k == 0 else ""))
        sources.append(str(path))
    return sources


# -- running the fresh processes -------------------------------------------------

def child_environment() -> dict[str, str]:
    env = dict(os.environ)
    # Users have .pyc files: a shell with PYTHONDONTWRITEBYTECODE=1 would make
    # every measured process compile all of Python source again (the library's
    # and torch.utils.cpp_extension's), which is not what users see.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def child_spec(tool: str, sources: list[str], workdir: Path) -> dict[str, Any]:
    return {
        "tool": tool,
        "name": OURS_NAME if tool == "ours" else TORCH_NAME,
        "sources": sources,
        "includes": [str(Path(sources[0]).parent)],
        "build_directory": str(workdir / tool),
        "n_functions": N_FUNCTIONS,
        "result_base": RESULT_BASE,
    }


def run_child(spec: dict[str, Any], cwd: Path) -> dict[str, float]:
    """One fresh process that loads (building first if needed) and returns its timings."""
    completed = subprocess.run([sys.executable, "-c", CHILD_CODE, json.dumps(spec)], cwd=cwd,
                               env=child_environment(), capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{spec['tool']} process failed (exit {completed.returncode}):\n"
                           f"{completed.stdout}\n{completed.stderr}")
    timing: dict[str, float] = json.loads(completed.stdout.strip().splitlines()[-1])
    return timing


def build_all(specs: dict[str, dict[str, Any]], workdir: Path) -> dict[str, float]:
    """Build each module once, each in a fresh process with its own cache folder."""
    build_seconds = {}
    for tool, spec in specs.items():
        Path(spec["build_directory"]).mkdir(parents=True)
        print(f"building with {tool} ...", file=sys.stderr, flush=True)
        build_seconds[tool] = run_child(spec, workdir)["call_s"]
    return build_seconds


def measure(specs: dict[str, dict[str, Any]], workdir: Path, repeat: int) -> dict[str, list[float]]:
    """Warm loads in fresh processes, the tools interleaved so drift hits both alike."""
    for spec in specs.values():
        run_child(spec, workdir)  # discarded: settles the page cache and any first-run .pyc writes
    samples: dict[str, list[float]] = {"ours": [], "ours_call": [], "torch": [], "torch_call": []}
    for _ in range(repeat):
        for tool, spec in specs.items():
            timing = run_child(spec, workdir)
            samples[tool].append(timing["total_s"] * 1e3)
            samples[f"{tool}_call"].append(timing["call_s"] * 1e3)
    return samples


# -- reporting ---------------------------------------------------------------------

ROW_LABELS = {
    "ours": "ours: import cpp_extension_tools + call",
    "ours_call": "ours: call only",
    "torch": "torch: import torch.utils.cpp_extension + load",
    "torch_call": "torch: load only",
}


def summarize(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {key: {"median_ms": statistics.median(values), "min_ms": min(values), "max_ms": max(values)}
            for key, values in samples.items()}


def ratios(summary: dict[str, dict[str, float]]) -> dict[str, float]:
    return {
        "torch_over_ours": summary["torch"]["median_ms"] / summary["ours"]["median_ms"],
        "torch_load_over_ours_call": summary["torch_call"]["median_ms"] / summary["ours_call"]["median_ms"],
    }


def print_table(summary: dict[str, dict[str, float]], ratio: dict[str, float], repeat: int) -> None:
    width = max(len(label) for label in ROW_LABELS.values())
    print(f"warm load, {repeat} fresh processes each (import torch done first, not timed)")
    print(f"{'':{width}}  {'median':>8}  {'min':>8}  {'max':>8}  (ms)")
    for key, label in ROW_LABELS.items():
        row = summary[key]
        print(f"{label:{width}}  {row['median_ms']:8.2f}  {row['min_ms']:8.2f}  {row['max_ms']:8.2f}")
    print(f"ratio torch/ours of the medians: {ratio['torch_over_ours']:.1f}x "
          f"(load call alone: {ratio['torch_load_over_ours_call']:.1f}x)")


def write_json(path: Path, samples: dict[str, list[float]], summary: dict[str, dict[str, float]],
               ratio: dict[str, float], build_seconds: dict[str, float], repeat: int) -> None:
    import torch

    report = {
        "repeat": repeat, "n_sources": N_FUNCTIONS, "python": sys.version.split()[0],
        "torch": str(torch.__version__), "build_seconds": build_seconds,
        "samples_ms": samples, "summary": summary, "ratios": ratio,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")


# -- entry point -------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help=f"measured loads per tool, at least {MIN_REPEAT} (default {DEFAULT_REPEAT})")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results to PATH")
    args = parser.parse_args(argv)
    if args.repeat < MIN_REPEAT:
        parser.error(f"--repeat: at least {MIN_REPEAT}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="warm_load_") as tmp:
        workdir = Path(tmp)
        sources = write_sources(workdir / "src")
        specs = {tool: child_spec(tool, sources, workdir) for tool in TOOLS}
        build_seconds = build_all(specs, workdir)
        samples = measure(specs, workdir, args.repeat)
    summary = summarize(samples)
    ratio = ratios(summary)
    print_table(summary, ratio, args.repeat)
    if args.json is not None:
        write_json(args.json, samples, summary, ratio, build_seconds, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
