"""The knowledge benchmarks still run (in --quick mode) and print their latency figures, so they never rot."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script", ["bench/search_bench.py", "bench/experts_bench.py"])
def test_benchmark_runs_in_quick_mode_and_prints_latencies_and_a_ratio(script):
    result = subprocess.run(
        [sys.executable, str(ROOT / script), "--quick"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "p50" in result.stdout and "p99" in result.stdout
    assert "x" in lines[-1] and "ms" in result.stdout
