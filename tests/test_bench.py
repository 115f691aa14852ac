"""`python -m bench --quick` runs every scenario and writes its files (timings are not tested here)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO

SCENARIOS = {"cold build", "cold build, C as C", "warm load", "warm load + import", "import overhead",
             "spawn fan-out, cold", "spawn fan-out, warm", "edit one source", "branch switch", "header edit",
             "scaling: sources", "scaling: artifacts", "kernel: hash_strings", "kernel: hash_ids", "remote tier"}


COMMITTED = REPO / "bench" / "results"


def _committed_results() -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in COMMITTED.iterdir()}


@pytest.mark.slow
def test_quick_bench_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    committed = _committed_results()
    out = tmp_path / "results"
    completed = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=REPO,
                               capture_output=True, text=True, timeout=1200)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"results go to {out}" in completed.stderr
    assert _committed_results() == committed  # without --out too: see test_only_a_full_run_writes_the_committed_results
    report = json.loads((out / "results.json").read_text())
    rows = report["rows"]
    assert {r["scenario"] for r in rows} == SCENARIOS
    for r in rows:
        assert r["ours"], r["scenario"]
        assert all(isinstance(v, (int, float)) and v >= 0 for v in r["ours"] + r["torch"]), r
    by_name = {r["scenario"]: r for r in rows}
    # The counts the suite measures with its logging compilers, checked where they are exact.
    assert by_name["branch switch"]["ours"] == [0]
    assert by_name["header edit"]["notes"]["rebuilt_exactly_the_dependents"]["ours"] == [True]
    assert by_name["edit one source"]["notes"]["compiles_and_links"]["ours"] == [[1, 1]]
    assert set(by_name["spawn fan-out, cold"]["notes"]["compiles"]["ours"]) == {report["settings"]["n_sources"]}
    n_sources = report["settings"]["n_sources"]
    for cold in ("cold build", "cold build, C as C"):  # every source compiled, by both tools
        assert by_name[cold]["notes"]["compiles"] == {"ours": [n_sources], "torch": [n_sources]}, cold
    overhead = by_name["cold build"]["notes"]["fixed_overhead_ms"]
    assert overhead == pytest.approx(by_name["cold build"]["ours"][0] - by_name["cold build"]["torch"][0])
    table = (out / "results.md").read_text()
    assert all(f"| {name} |" in table for name in SCENARIOS)
    for plot in ("scenarios.png", "scaling.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_a_full_run_writes_the_committed_results(tmp_path: Path) -> None:
    from bench.__main__ import DEFAULT_OUT, output_folder, parse_args

    assert DEFAULT_OUT == COMMITTED
    assert output_folder(parse_args([])) == COMMITTED
    assert output_folder(parse_args(["--out", str(tmp_path)])) == tmp_path
    assert output_folder(parse_args(["--quick", "--out", str(tmp_path)])) == tmp_path
    quick = [output_folder(parse_args(["--quick"])) for _ in range(2)]
    try:
        for folder in quick:
            assert folder.is_dir() and not any(folder.iterdir())
            assert folder.parent == Path(tempfile.gettempdir())
        assert quick[0] != quick[1]  # a new folder per run
    finally:
        for folder in quick:
            folder.rmdir()


def test_warm_path_bench_measures_the_call_and_its_floor() -> None:
    completed = subprocess.run([sys.executable, "-m", "bench.warm_path", "--repeat", "1", "--json"], cwd=REPO,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["repeat"] == 1
    assert result["warm_call_ms"] > 0 and result["floor_ms"] > 0
    assert result["ratio"] == pytest.approx(result["warm_call_ms"] / result["floor_ms"])
