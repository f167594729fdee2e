"""The engine's benchmarks still run (in --quick mode), so they never rot."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script", ["bench/sync_bench.py", "bench/store_bench.py"])
def test_benchmark_runs_in_quick_mode_and_prints_a_ratio(script):
    result = subprocess.run(
        [sys.executable, str(ROOT / script), "--quick"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "x" in result.stdout.splitlines()[-1]
