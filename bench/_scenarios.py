"""The scenarios of ``python -m bench``: each runs both tools in fresh processes and returns result rows.

A row: ``{"scenario", "metric", "unit", "ours": [samples], "torch": [samples] (may be empty),
"target", "met", "notes"}``. Samples are per repetition; the report takes medians.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any

from cpp_extension_tools import get_default_cpp_cflags

from ._modules import ModuleFiles, write_module
from ._pch import pch_builds
from ._remote import remote_tier
from ._run import TOOLS, Workspace, spec

__all__ = ["Settings", "run_all"]


class Settings:
    def __init__(self, quick: bool, repeat: int) -> None:
        self.quick = quick
        self.repeat = repeat
        self.n_sources = 2 if quick else 8
        self.workers = 2 if quick else 8
        self.scaling_sizes = (1, 8) if quick else (1, 8, 64, 256)
        self.artifact_counts = (1, 10) if quick else (1, 100, 1000)


def row(scenario: str, metric: str, unit: str, ours: list[float], torch: list[float], target: str,
        met: bool | None, **notes: Any) -> dict[str, Any]:
    return {"scenario": scenario, "metric": metric, "unit": unit, "ours": ours, "torch": torch,
            "target": target, "met": met, "notes": notes}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _built(ws: Workspace, files: ModuleFiles) -> dict[str, str]:
    """A fresh cache per tool with the module built in it; returns the caches."""
    caches = {tool: ws.new_cache(tool) for tool in TOOLS}
    for tool in TOOLS:
        ws.run(spec(tool, files, caches[tool]))
    return caches


# -- builds ---------------------------------------------------------------------

def _cold_builds(ws: Workspace, files: ModuleFiles, s: Settings) -> tuple[dict[str, list[float]],
                                                                         dict[str, list[float]],
                                                                         dict[str, list[int]]]:
    """Both tools get the same flags, this library's defaults (torch's load() adds none of its own, so it
    would otherwise compile without optimization): the same compiler commands, but for the language.

    Returns (import + call, call alone, compiles). A cold build with torch needs torch.utils.cpp_extension,
    which torch's user imports before calling load() (about 140 ms after ``import torch``) and ours imports
    inside the call: only import + call is the same work on both sides."""
    samples: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    calls: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    compiles: dict[str, list[int]] = {tool: [] for tool in TOOLS}
    for _ in range(s.repeat):
        for tool in TOOLS:
            ws.compilers.reset()
            load = spec(tool, files, ws.new_cache(tool), cflags=get_default_cpp_cflags())
            result = ws.run(load)
            samples[tool].append(result["total_s"] * 1e3)
            calls[tool].append(result["call_s"] * 1e3)
            compiles[tool].append(len(ws.compilers.compiles()))
    return samples, calls, compiles


def cold_build(ws: Workspace, cpp_files: ModuleFiles, s: Settings) -> dict[str, Any]:
    """Both tools compile the same .cpp sources as C++: what is left is each tool's own cost per build."""
    samples, calls, compiles = _cold_builds(ws, cpp_files, s)
    overhead = median(samples["ours"]) - median(samples["torch"])
    return row("cold build", f"first build, empty cache: the same {cpp_files.n_sources} C++ sources for both "
               "(import of each tool's module + the call)", "ms", samples["ours"], samples["torch"],
               "fixed overhead <= 200 ms above torch's", overhead <= 200, compiles=compiles,
               fixed_overhead_ms=overhead, ours_over_torch=median(samples["ours"]) / median(samples["torch"]),
               call_only_ms=calls)


def cold_build_c_as_c(ws: Workspace, files: ModuleFiles, s: Settings) -> dict[str, Any]:
    """The module's .c sources: ours compiles them as C, torch's load() as C++. The gain is the language's."""
    samples, calls, compiles = _cold_builds(ws, files, s)
    return row("cold build, C as C", f"first build, empty cache: {files.n_sources} .c sources, compiled as C by "
               "ours and as C++ by torch (import + call)", "ms", samples["ours"], samples["torch"],
               "(informative: the gain of compiling C as C)", None, compiles=compiles,
               torch_over_ours=median(samples["torch"]) / median(samples["ours"]), call_only_ms=calls)


def fan_out_cold(ws: Workspace, files: ModuleFiles, s: Settings, cold: dict[str, Any]) -> dict[str, Any]:
    # The slowest worker's load call: from its call until the module is usable, the build's wall time as
    # the workers see it. (The pool's own wall time adds each spawn worker's start-up and `import torch`,
    # which neither tool controls and which the single cold build does not include.)
    slowest: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    pool_wall: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    compiles: dict[str, list[int]] = {tool: [] for tool in TOOLS}
    for _ in range(s.repeat):
        for tool in TOOLS:
            ws.compilers.reset()
            result = ws.run(spec(tool, files, ws.new_cache(tool), workers=s.workers))
            slowest[tool].append(max(w["call_s"] for w in result["workers"]) * 1e3)
            pool_wall[tool].append(result["wall_s"] * 1e3)
            compiles[tool].append(len(ws.compilers.compiles()))
    over_single = median(slowest["ours"]) / median(cold["notes"]["call_only_ms"]["ours"])  # both the call alone
    one_build = all(n == files.n_sources for n in compiles["ours"])
    return row("spawn fan-out, cold", f"{s.workers} spawn workers, empty cache: slowest worker's load call", "ms",
               slowest["ours"], slowest["torch"], "1 compile of each source; <= 1.3x a single cold build",
               one_build and over_single <= 1.3, compiles=compiles, ours_over_single_cold_build=over_single,
               pool_wall_ms=pool_wall)


def fan_out_warm(ws: Workspace, files: ModuleFiles, s: Settings) -> dict[str, Any]:
    caches = _built(ws, files)
    per_worker: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    for _ in range(s.repeat):
        for tool in TOOLS:
            result = ws.run(spec(tool, files, caches[tool], workers=s.workers))
            per_worker[tool] += [w["call_s"] * 1e3 for w in result["workers"]]
    return row("spawn fan-out, warm", f"{s.workers} spawn workers, cache hit: load call per worker", "ms",
               per_worker["ours"], per_worker["torch"], "<= 3 ms per worker", median(per_worker["ours"]) <= 3)


# -- warm loads -------------------------------------------------------------------

def warm_load(ws: Workspace, files: ModuleFiles, s: Settings) -> list[dict[str, Any]]:
    caches = _built(ws, files)
    call: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    total: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    for tool in TOOLS:
        ws.run(spec(tool, files, caches[tool]))  # settles the page cache and first-run .pyc writes
    for _ in range(s.repeat):
        for tool in TOOLS:  # interleaved, so drift hits both alike
            result = ws.run(spec(tool, files, caches[tool]))
            call[tool].append(result["call_s"] * 1e3)
            total[tool].append(result["total_s"] * 1e3)
    ratio = median(call["torch"]) / median(call["ours"])
    return [
        row("warm load", "fresh process, torch imported, cache hit: the load call", "ms", call["ours"],
            call["torch"], "<= 2 ms and >= 100x faster than torch", median(call["ours"]) <= 2 and ratio >= 100,
            torch_over_ours=ratio),
        row("warm load + import", "the same, including `import cpp_extension_tools` / "
            "`import torch.utils.cpp_extension`", "ms", total["ours"], total["torch"], "(informative)", None,
            torch_over_ours=median(total["torch"]) / median(total["ours"])),
    ]


IMPORT_EXAMPLE = """
import json, sys, time
start = time.perf_counter()
import torch
middle = time.perf_counter()
before = set(sys.modules)
import example_package
end = time.perf_counter()
assert example_package.Add42ToInteger(1) == 43
modules = [m for m in set(sys.modules) - before if m.split(".")[0] in ("example_package", "cpp_extension_tools")]
print(json.dumps({"torch_s": middle - start, "example_s": end - middle, "modules": len(modules)}))
"""

# The reference: importing as many empty Python modules (from .pyc, after torch) as
# `import example_package` imports of its own and of this library. It is the interpreter's
# fixed cost per module, which the 3 ms target cannot be read without on a slow machine.
IMPORT_EMPTY = """
import json, time
import torch
start = time.perf_counter()
import empty_modules
for i in range({count}):
    __import__(f"empty_modules.m{{i}}")
print(json.dumps({{"import_s": time.perf_counter() - start}}))
"""


def _empty_package(folder: Path, count: int) -> None:
    package = folder / "empty_modules"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    for i in range(count):
        (package / f"m{i}.py").write_text("")


def import_overhead(ws: Workspace, s: Settings) -> dict[str, Any]:
    env = {"CACHED_CPP_EXTENSION_BUILD_DIR": str(ws.folder / "caches" / "example_package")}
    ws.run_python(IMPORT_EXAMPLE, env)  # builds example_package (not timed)
    count = ws.run_python(IMPORT_EXAMPLE, env)["modules"]
    _empty_package(ws.folder, count - 1)  # the package itself is the count's last module
    ws.run_python(IMPORT_EMPTY.format(count=count - 1))  # writes the .pyc files (not timed)
    samples, floor = [], []
    for _ in range(s.repeat):
        samples.append(ws.run_python(IMPORT_EXAMPLE, env)["example_s"] * 1e3)
        floor.append(ws.run_python(IMPORT_EMPTY.format(count=count - 1))["import_s"] * 1e3)
    return row("import overhead", f"`import example_package` after `import torch`, warm; reference: importing "
               f"{count} empty modules (as many as it imports)", "ms", samples, floor, "<= 3 ms",
               median(samples) <= 3, modules_imported=count,
               ours_minus_empty_imports_ms=median(samples) - median(floor))


# -- edits ---------------------------------------------------------------------------

def edit_one_source(ws: Workspace, files: ModuleFiles, s: Settings) -> dict[str, Any]:
    caches = _built(ws, files)
    samples: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    reference: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    counts: dict[str, list[list[int]]] = {tool: [] for tool in TOOLS}
    edited = min(3, files.n_sources - 1)
    for rep in range(s.repeat):
        files.variants[edited] = rep + 1
        files.write()
        for tool in TOOLS:
            ws.compilers.reset()
            samples[tool].append(ws.run(spec(tool, files, caches[tool]))["call_s"] * 1e3)
            compiles, links = ws.compilers.compiles(), ws.compilers.links()
            counts[tool].append([len(compiles), len(links)])
            reference[tool].append((sum(t for _, t in compiles) + sum(links)) * 1e3)
    files.variants.clear()
    files.write()
    over = median(samples["ours"]) / median(reference["ours"])
    return row("edit one source", f"1 of {files.n_sources} sources changed, reload", "ms", samples["ours"],
               samples["torch"], "1 compile + 1 link; <= 1.2x (that compile + link)",
               all(c == [1, 1] for c in counts["ours"]) and over <= 1.2, compiles_and_links=counts,
               compile_plus_link_ms=reference, ours_over_compile_plus_link=over)


def branch_switch(ws: Workspace, files: ModuleFiles, s: Settings) -> dict[str, Any]:
    caches = _built(ws, files)
    on_return: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    timing: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    changed = sorted({0, files.n_sources - 1})
    for rep in range(s.repeat):
        files.variants = {k: 100 + rep for k in changed}  # branch B
        files.write()
        for tool in TOOLS:
            ws.run(spec(tool, files, caches[tool]))
        files.variants = {}  # back to A
        files.write()
        for tool in TOOLS:
            ws.compilers.reset()
            timing[tool].append(ws.run(spec(tool, files, caches[tool]))["call_s"] * 1e3)
            on_return[tool].append(len(ws.compilers.compiles()))
    return row("branch switch", "sources A -> B -> A: compiles on the return to A", "compiles",
               on_return["ours"], on_return["torch"], "0 compiles on the return to A",
               all(n == 0 for n in on_return["ours"]), return_load_ms=timing)


def header_edit(ws: Workspace, files: ModuleFiles, s: Settings) -> dict[str, Any]:
    caches = _built(ws, files)
    dependents = sorted(f"f{k}.c" for k in range(files.n_sources) if files.includes_shared(k))
    samples: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    exact: dict[str, list[bool]] = {tool: [] for tool in TOOLS}
    for _ in range(s.repeat):
        files.shared_offset += 1
        files.write()
        for tool in TOOLS:
            ws.compilers.reset()
            samples[tool].append(ws.run(spec(tool, files, caches[tool]))["call_s"] * 1e3)
            compiled = sorted(name for name, _ in ws.compilers.compiles())
            exact[tool].append(compiled == dependents and len(ws.compilers.links()) == 1)
    return row("header edit", f"shared header included by {len(dependents)} of {files.n_sources} sources changed",
               "ms", samples["ours"], samples["torch"], "every dependent object rebuilt, nothing else",
               all(exact["ours"]), rebuilt_exactly_the_dependents=exact)


# -- scaling -------------------------------------------------------------------------

def scaling_sources(ws: Workspace, s: Settings) -> dict[str, Any]:
    per_size: dict[str, float] = {}
    samples_by_size: dict[str, list[float]] = {}
    for n in s.scaling_sizes:
        files = write_module(ws.folder / f"scaling-{n}", n)
        cache = ws.new_cache("ours")
        ws.run(spec("ours", files, cache))
        ws.run(spec("ours", files, cache))
        samples = [ws.run(spec("ours", files, cache))["call_s"] * 1e3 for _ in range(s.repeat)]
        samples_by_size[str(n)] = samples
        per_size[str(n)] = median(samples)
    sizes = list(s.scaling_sizes)
    growth = per_size[str(sizes[-1])] / per_size[str(sizes[0])]
    return row("scaling: sources", f"warm load call for modules of {', '.join(map(str, sizes))} sources", "ms",
               samples_by_size[str(sizes[-1])], [], "grows no faster than the number of files",
               growth <= sizes[-1] / sizes[0], median_ms_by_sources=per_size, samples_ms=samples_by_size)


LOOKUP = """
import glob, json, os, sys, time
import torch
import cpp_extension_tools as c
spec = json.loads(sys.argv[1]) if len(sys.argv) > 1 else SPEC
if spec["drop_hint"]:
    for hint in glob.glob(os.path.join(spec["build_directory"], spec["name"], "latest-*")):
        os.unlink(hint)
start = time.perf_counter()
c.cached_load_torch_cpp_extension(spec["name"], spec["sources"], extra_include_paths=spec["includes"],
                                  build_directory=spec["build_directory"])
print(json.dumps({"call_s": time.perf_counter() - start}))
"""


def lookup_artifacts(ws: Workspace, files: ModuleFiles, s: Settings) -> dict[str, Any]:
    by_count: dict[str, dict[str, float]] = {}
    samples_last: list[float] = []
    for count in s.artifact_counts:
        cache = ws.new_cache("ours")
        load = spec("ours", files, cache)
        ws.run(load)
        _fabricate_artifacts(Path(cache) / load["name"] / "artifacts", count - 1)
        figures = {}
        for drop_hint in (False, True):
            code = LOOKUP.replace("SPEC", repr({**load, "drop_hint": drop_hint}))
            ws.run_python(code)
            samples = [ws.run_python(code)["call_s"] * 1e3 for _ in range(s.repeat)]
            figures["hint_missing_ms" if drop_hint else "warm_ms"] = median(samples)
            if not drop_hint:
                samples_last = samples
        by_count[str(count)] = figures
    counts = [str(n) for n in s.artifact_counts]
    flat = by_count[counts[-1]]["warm_ms"] <= 2 * by_count[counts[0]]["warm_ms"]
    return row("scaling: artifacts", f"warm load call with {', '.join(counts)} artifacts in the module's cache",
               "ms", samples_last, [], "flat (the lookup reads one hint, lists nothing)", flat,
               median_ms_by_artifacts=by_count)


def _fabricate_artifacts(artifacts: Path, count: int) -> None:
    """Copies of the real artifact under other content ids: what many past builds leave behind."""
    original = next(artifacts.iterdir())
    key = original.name.split("-")[0]
    for i in range(count):
        copy = artifacts / f"{key}-{i:016x}"
        shutil.copytree(original, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["artifact_id"] = copy.name
        manifest["inputs"][0]["sha256"] = f"{i:064x}"  # other sources than today's: never a match
        (copy / "manifest.json").write_text(json.dumps(manifest))


# -- example kernels -----------------------------------------------------------------

KERNELS = """
import json, torch
import example_package as ep
from bench import example_kernels as k
rows = k.bench_strings(ep, STRINGS, REPEAT) + k.bench_ids(ep, IDS, REPEAT)
print(json.dumps(rows))
"""


def example_kernels(ws: Workspace, s: Settings) -> list[dict[str, Any]]:
    code = (KERNELS.replace("STRINGS", str(10_000 if s.quick else 1_000_000))
            .replace("IDS", str(100_000 if s.quick else 10_000_000)).replace("REPEAT", str(s.repeat)))
    env = {"CACHED_CPP_EXTENSION_BUILD_DIR": str(ws.folder / "caches" / "example_package")}
    rows = []
    for kernel in ws.run_python(code, env):
        speedup = kernel.get("speedup")
        if "met" in kernel:
            met = kernel["met"]
        else:
            met = speedup >= 10 if speedup is not None else kernel["ratio_to_clone"] <= 2
        rows.append(row(f"kernel: {kernel['kernel']}", f"{kernel['case']} vs {kernel['reference']}", "ms",
                        [kernel["ours_ms"]],
                        [kernel["reference_ms"]], kernel["target"], met, reference=kernel["reference"],
                        **{k: kernel[k] for k in ("speedup", "ratio_to_clone", "ratio_to_numpy") if k in kernel}))
    return rows


def run_all(ws: Workspace, s: Settings, log: Any) -> list[dict[str, Any]]:
    files = write_module(ws.folder / "module", s.n_sources)
    cpp_files = write_module(ws.folder / "module-cpp", s.n_sources, ".cpp")
    rows: list[dict[str, Any]] = []
    by_name: dict[str, dict[str, Any]] = {}
    steps: list[tuple[str, Any]] = [
        ("cold build", lambda: [cold_build(ws, cpp_files, s)]),
        ("cold build, C as C", lambda: [cold_build_c_as_c(ws, files, s)]),
        ("warm load", lambda: warm_load(ws, files, s)),
        ("import overhead", lambda: [import_overhead(ws, s)]),
        ("spawn fan-out, cold", lambda: [fan_out_cold(ws, files, s, by_name["cold build, C as C"])]),
        ("spawn fan-out, warm", lambda: [fan_out_warm(ws, files, s)]),
        ("edit one source", lambda: [edit_one_source(ws, files, s)]),
        ("branch switch", lambda: [branch_switch(ws, files, s)]),
        ("header edit", lambda: [header_edit(ws, files, s)]),
        ("scaling: sources", lambda: [scaling_sources(ws, s)]),
        ("scaling: artifacts", lambda: [lookup_artifacts(ws, files, s)]),
        ("example kernels", lambda: example_kernels(ws, s)),
        # torch C++ builds take 20-60 s each on 2 cores: full runs only (python -m bench._pch runs it alone).
        ("torch header (shared PCH)", lambda: [] if s.quick else pch_builds(ws, s.repeat)),
        ("remote tier", lambda: remote_tier(ws, files, 1 if s.quick else 3, s.workers)),
    ]
    for label, step in steps:
        log(f"{label} ...")
        rows += step()
        by_name.update((r["scenario"], r) for r in rows)
    return rows
