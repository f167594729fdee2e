"""The body-deadline benchmark still runs (in --quick mode), so it never rots."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_body_deadline_benchmark_runs_in_quick_mode_and_prints_the_three_ways_as_ratios():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "body_deadline_bench.py"), "--quick"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:4]] == ["no", "BodyDeadline", "asyncio.timeout"]
    assert lines[1].rstrip().endswith("1.00x")
    assert lines[-1].startswith("BodyDeadline vs no deadline: ") and "x (+" in lines[-1]
