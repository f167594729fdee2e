"""bench/mcp_route_bench.py and bench/mcp_bench.py run end to end in `--quick` mode and report every figure.

Only that they work and measure the right thing is checked; the figures are for people (a shared two-core
machine is far too noisy for a threshold).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_bench(name: str) -> dict:
    out = subprocess.run([sys.executable, str(BENCH / name), "--quick", "--json"], capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.slow
def test_the_route_bench_measures_the_sdk_and_the_hand_written_endpoint_side_by_side():
    report = run_bench("mcp_route_bench.py")
    assert set(report["routes"]) == {"A_sdk_2025_11_25", "A_sdk_2026_07_28", "B_aiohttp_2025_11_25"}
    for figures in report["routes"].values():
        for call in ("tools_list", "tools_call"):
            assert 0 < figures[call]["p50_ms"] <= figures[call]["p99_ms"]
    assert len(report["ratios"]) == 8 and all(r > 0 for r in report["ratios"].values())
    assert {"mcp", "pydantic", "starlette"} <= set(report["import"]["packages_added"])
    assert "aiohttp" not in report["import"]["packages_added"]


@pytest.mark.slow
def test_the_tool_bench_puts_every_tool_beside_the_same_question_asked_of_gitlab():
    report = run_bench("mcp_bench.py")
    tools = report["tools"]
    assert set(tools) == {"search", "list_issues", "list_merge_requests", "get_issue", "get_merge_request",
                          "experts", "changes", "sync_status"}
    for name, row in tools.items():
        assert 0 < row["mcp"]["p50_ms"] <= row["mcp"]["p99_ms"], name
        if name != "sync_status":
            assert row["gitlab"]["p50_ms"] >= report["latency_ms"], "every GitLab question pays the latency"
            assert row["gitlab_requests_saved"] >= 1 and row["latency_ratio_p50"] > 0
    assert tools["experts"]["gitlab_requests_saved"] == 1 + 2 * 10  # the list, then diffs + discussions each
