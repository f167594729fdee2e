"""bench/api_bench.py runs end to end in `--quick` mode, with wrk and without it, and reports every figure.

Only that it works and measures the right thing is checked here; the figures themselves are for people
(a shared two-core machine is far too noisy for a threshold).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "api_bench.py"
SERVERS = {"bare", "limited", "cached", "uncached", "304", "datasette", "L1 app", "L2 limit"}


def run_bench(*extra: str) -> dict:
    out = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", *extra], capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def check_report(report: dict) -> None:
    results = {r["name"]: r for r in report["results"]}
    assert set(results) == SERVERS
    for name, result in results.items():
        assert result["requests_per_s"] > 0 and result["requests"] > 0, name
        assert result["errors"] == 0, name
    assert results["cached"]["bytes_per_response"] == results["bare"]["bytes_per_response"] > 10_000
    assert set(report["ratios"]) >= {"cached_over_bare", "uncached_over_datasette", "not_modified_over_bare",
                                     "limited_over_bare", "layer1_over_bare", "layer2_over_bare"}
    assert list(report["layers_us_per_request"]) == [
        "aiohttp (bare)", "gateway app + middleware + hook", "rate limit (token lookup, hit, headers)",
        "auth + parameters + ETag/cache lookup"]


@pytest.mark.slow
def test_the_bench_runs_with_the_aiohttp_load_generator():
    report = run_bench("--no-wrk", "--connections", "10")
    assert report["load_generator"] == "aiohttp client process"
    check_report(report)


@pytest.mark.slow
def test_the_bench_runs_with_wrk():
    assert shutil.which("wrk") is not None, "wrk is not installed (apt-get install wrk; .ci/run installs it)"
    report = run_bench()
    assert report["load_generator"].startswith("wrk")
    check_report(report)
