"""Cold builds of torch C++ modules: ours with the shared precompiled header vs torch's load().

Modules of one and of four sources that include torch/extension.h first, each function checked by its
result. Ours runs with the shared header already built (its own build is timed once, as its own row);
torch's load() with the same flags. torch's load_inline(use_pch=True) writes its .gch into torch's
install folder (site-packages), where every other build of that environment would then find it: that
row runs only with ``BENCH_TORCH_PCH=1``, in an environment of its own, after every other build, and the
files it writes there are deleted after each module size.

Run alone: ``python -m bench._pch [repeat]`` (each torch build takes 20-60 s on a 2-core machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._run import Workspace

__all__ = ["pch_builds", "write_torch_module"]

_FLAGS = ["-O2"]


def write_torch_module(folder: Path, n_sources: int) -> list[str]:
    """``n_sources`` C++ files, each with a function ``f<i>`` returning ``x + i``; the first binds them."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for i in range(n_sources):
        binding = "" if i else "".join(f"torch::Tensor f{j}(torch::Tensor x);\n" for j in range(1, n_sources))
        binding += ("PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {\n"
                    + "".join(f'  m.def("f{j}", &f{j});\n' for j in range(n_sources)) + "}\n") if not i else ""
        path = folder / f"op{i}.cpp"
        path.write_text(f"#include <torch/extension.h>\n\ntorch::Tensor f{i}(torch::Tensor x) {{ return x + {i}; }}\n"
                        + binding)
        sources.append(str(path))
    return sources


_CHILD = """\
import json, sys, time
import torch
spec = json.loads(sys.argv[1])
start = time.perf_counter()
if spec["tool"] == "ours":
    from cpp_extension_tools import cached_load_torch_cpp_extension
    m = cached_load_torch_cpp_extension(spec["name"], spec["sources"], extra_cflags=spec["flags"],
                                        build_directory=spec["cache"])
elif spec["tool"] == "torch":
    from torch.utils.cpp_extension import load
    m = load(spec["name"], spec["sources"], extra_cflags=spec["flags"], build_directory=spec["cache"])
else:
    from torch.utils.cpp_extension import load_inline
    texts = [open(p).read() for p in spec["sources"]]
    m = load_inline(spec["name"], texts, extra_cflags=spec["flags"], build_directory=spec["cache"],
                    use_pch=True)
seconds = time.perf_counter() - start
ok = all(int(getattr(m, f"f{i}")(torch.zeros(1)).item()) == i for i in range(len(spec["sources"])))
print(json.dumps({"seconds": seconds, "ok": ok}))
"""


def _build(ws: Workspace, tool: str, name: str, sources: list[str], extra_env: dict[str, str] | None = None) -> float:
    # One cache root for all our builds (the shared header lives in it); a fresh folder for each of torch's.
    cache = ws.folder / "pch-caches" / ("ours-root" if tool == "ours" else f"{tool}-{name}-{time.monotonic_ns()}")
    cache.mkdir(parents=True, exist_ok=True)
    spec = {"tool": tool, "name": name, "sources": sources, "flags": _FLAGS, "cache": str(cache)}
    code = _CHILD.replace("json.loads(sys.argv[1])", f"json.loads({json.dumps(spec)!r})")
    result = ws.run_python(code, extra_env)
    if not result["ok"]:
        raise RuntimeError(f"{tool} built {name} but its functions return wrong results")
    return float(result["seconds"])


def pch_builds(ws: Workspace, repeat: int = 1, sizes: tuple[int, ...] = (1, 4)) -> list[dict[str, Any]]:
    from ._scenarios import row

    modules = {n: write_torch_module(ws.folder / f"pch-module-{n}", n) for n in sizes}
    # The shared header's own build: the first module of ours pays it once (nothing, in a reused folder).
    run = f"{time.time_ns() % 10**8}"
    first = _build(ws, "ours", f"pch_warmup_{run}", write_torch_module(ws.folder / "pch-warmup", 1))
    _progress(f"first module of ours (with the shared header's build, if it was not there): {first:.1f} s")
    rows = [row("torch header: shared PCH build", "first module of ours (header build + its compile)", "s",
                [first], [], "paid once per compiler, torch and flags", None)]
    samples = {n: _samples(ws, n, sources, repeat, run) for n, sources in modules.items()}
    if os.environ.get("BENCH_TORCH_PCH") == "1":
        _torch_pch_samples(ws, modules, samples, run)
    for n, by_tool in samples.items():
        speedup = statistics.median(by_tool["torch"]) / statistics.median(by_tool["ours"])
        target = "at least 3x faster than torch's load()" if n == 4 else "faster than torch's load()"
        rows.append(row(f"torch header: cold build, {n} source{'s' if n > 1 else ''}", "cold build, shared PCH warm",
                        "s", by_tool["ours"], by_tool["torch"], target, speedup >= (3 if n == 4 else 1),
                        speedup=round(speedup, 2), ours_without_pch=by_tool["ours_no_pch"],
                        torch_load_inline_use_pch=by_tool["torch_pch"] or "not run (BENCH_TORCH_PCH unset)",
                        torch_pch_header_build=by_tool["torch_pch_first"], repeat=repeat, flags=_FLAGS))
    return rows


def _samples(ws: Workspace, n: int, sources: list[str], repeat: int, run: str) -> dict[str, list[float]]:
    """Cold builds of one module: ours and torch's load() ``repeat`` times each, ours without the PCH once (the
    torch_pch keys are filled by _torch_pch_samples)."""
    samples: dict[str, list[float]] = {"ours": [], "torch": [], "ours_no_pch": [], "torch_pch_first": [],
                                       "torch_pch": []}
    for r in range(repeat):
        # Each repetition a name of its own: a cold build every time, the shared header warm.
        for tool, key, extra in (("ours", "ours", None), ("torch", "torch", None),
                                 ("ours", "ours_no_pch", {"CACHED_CPP_EXTENSION_DISABLE_PCH": "1"})):
            if key == "ours_no_pch" and r > 0:
                continue
            samples[key].append(_build(ws, tool, f"pch_{key}_{n}_{r}_{run}", sources, extra))
            _progress(f"{n} source(s), {key}: {samples[key][-1]:.1f} s")
    return samples


def _torch_pch_samples(ws: Workspace, modules: dict[int, list[str]], samples: dict[int, dict[str, list[float]]],
                       run: str) -> None:
    """torch's load_inline(use_pch=True), after every other build: the .gch it leaves beside torch/extension.h
    is found by gcc for any later build that includes that header, torch's load() too, so it would flatter the
    torch rows. The first build of each size writes the header (its own sample), the second uses it; what it
    wrote is deleted after each size."""
    import torch

    folder = Path(torch.__file__).parent / "include" / "torch"
    present = _torch_pch_files(folder)
    if present:
        raise RuntimeError(f"{present} exist before the benchmark: torch's rows would use them; delete them first")
    for n, sources in modules.items():
        try:
            for key in ("torch_pch_first", "torch_pch"):
                samples[n][key].append(_build(ws, "inline", f"pch_{key}_{n}_{run}", sources))
                _progress(f"{n} source(s), {key}: {samples[n][key][-1]:.1f} s")
        finally:  # each size's first build writes the header again
            for leftover in _torch_pch_files(folder):
                leftover.unlink()


def _torch_pch_files(folder: Path) -> list[Path]:
    """What torch's use_pch=True writes beside its header: the .gch and its signature file."""
    return sorted([*folder.glob("extension.h.gch*"), *folder.glob("extension.h.sign")])


def _progress(message: str) -> None:
    print(f"[bench._pch] {message}", file=sys.stderr, flush=True)


def main() -> int:
    """``python -m bench._pch [REPEAT [SCRATCH [SIZES]]]``: SCRATCH, a folder kept (and reused: its shared
    header stays built); SIZES, e.g. ``4`` or ``1,4``."""
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    sizes = tuple(int(n) for n in sys.argv[3].split(",")) if len(sys.argv) > 3 else (1, 4)
    with contextlib.ExitStack() as stack:
        scratch = (sys.argv[2] if len(sys.argv) > 2 else
                   stack.enter_context(tempfile.TemporaryDirectory(prefix="cpp_extension_tools_bench_pch_")))
        rows = pch_builds(Workspace(Path(scratch)), repeat, sizes)
    for r in rows:
        print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
