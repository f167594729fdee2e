"""The request-budget benchmark still runs (in --quick mode), so it never rots."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_budget_benchmark_runs_in_quick_mode_and_keeps_the_budget():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "budget_bench.py"), "--quick"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.strip().startswith("minutes over the budget: 0;") for line in lines), result.stdout
    assert "x" in lines[-1]
