"""The reconcile benchmark still runs (in --quick mode), so it never rots."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_reconcile_benchmark_runs_in_quick_mode_and_prints_its_ratios():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench/reconcile_bench.py"), "--quick"],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "(target <= 1.05x)" in out and "fewer requests" in out
    assert "deleted from the mirror: 12 (expected 12)" in out
    assert "mirror lacking 3 per project and kind: recovered 12 (expected 12)" in out
