"""Writing the results: results.json, a Markdown table, and PNG plots (matplotlib)."""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path
from typing import Any

__all__ = ["markdown", "plot", "write_json"]


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        ours, torch = _stats(r["ours"]), _stats(r["torch"])
        ratio = (torch["median"] / ours["median"] if ours and torch and ours["median"] else None)
        out.append({**r, "ours_stats": ours, "torch_stats": torch, "torch_over_ours": ratio})
    return out


def write_json(path: Path, rows: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    import torch

    report = {"settings": settings, "python": platform.python_version(), "torch": str(torch.__version__),
              "machine": platform.machine(), "cpus": _cpu_count(), "rows": summarize(rows)}
    path.write_text(json.dumps(report, indent=1) + "\n")


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cell(stats: dict[str, float] | None, unit: str) -> str:
    if stats is None:
        return "-"
    digits = 0 if unit == "compiles" else 2
    return f"{stats['median']:.{digits}f} ({stats['min']:.{digits}f}-{stats['max']:.{digits}f})"


def markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    lines = [f"Medians (min-max) of {settings['repeat']} repetitions, each in fresh processes"
             f"{' (--quick)' if settings['quick'] else ''}. \"ratio\" is the reference's median over ours; the "
             "reference is torch.utils.cpp_extension.load, or for kernels the baseline the row names.", "",
             "| scenario | what | unit | ours | torch / reference | ratio | target | met |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summarize(rows):
        ratio = f"{r['torch_over_ours']:.1f}x" if r["torch_over_ours"] else "-"
        met = {True: "yes", False: "**no**", None: "-"}[r["met"]]
        lines.append(f"| {r['scenario']} | {r['metric']} | {r['unit']} | {_cell(r['ours_stats'], r['unit'])} | "
                     f"{_cell(r['torch_stats'], r['unit'])} | {ratio} | {r['target']} | {met} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    timed = [r for r in summarize(rows) if r["unit"] == "ms" and r["ours_stats"] and r["torch_stats"]
             and not r["scenario"].startswith("kernel")]
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.55 * len(timed)))
    names = [r["scenario"] for r in timed]
    y = range(len(timed))
    ax.barh([i + 0.2 for i in y], [r["ours_stats"]["median"] for r in timed], height=0.4, label="cpp_extension_tools")
    ax.barh([i - 0.2 for i in y], [r["torch_stats"]["median"] for r in timed], height=0.4,
            label="torch.utils.cpp_extension.load")
    ax.set_yticks(list(y), names)
    ax.set_xscale("log")
    ax.set_xlabel("median time, ms (log scale)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    written.append(_save(fig, folder / "scenarios.png"))
    scaling = {r["scenario"]: r["notes"] for r in rows if r["scenario"].startswith("scaling")}
    if scaling:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        sources = scaling.get("scaling: sources", {}).get("median_ms_by_sources", {})
        axes[0].plot([int(k) for k in sources], list(sources.values()), marker="o")
        axes[0].set(xscale="log", xlabel="sources in the module", ylabel="warm load call, ms", title="module size")
        artifacts = scaling.get("scaling: artifacts", {}).get("median_ms_by_artifacts", {})
        for key, label in (("warm_ms", "with the latest-* hint"), ("hint_missing_ms", "hint missing (scan)")):
            axes[1].plot([int(k) for k in artifacts], [v[key] for v in artifacts.values()], marker="o", label=label)
        axes[1].set(xscale="log", xlabel="artifacts in the module's cache", ylabel="warm load call, ms",
                    title="cache size")
        axes[1].legend()
        for axis in axes:
            axis.set_ylim(bottom=0)
        fig.tight_layout()
        written.append(_save(fig, folder / "scaling.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
