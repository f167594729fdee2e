"""The scale-out benchmark runs end to end (tiny size): both worker counts answer, every client gets every event."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.redis_server import REDIS_SERVER, SKIP_REASON

BENCH = Path(__file__).resolve().parent.parent / "bench" / "scaleout_bench.py"


@pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON + " (the benchmark starts its own redis-server)")
def test_quick_scaleout_bench_reports_a_ratio_and_delivers_every_event_to_every_client() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--json"], capture_output=True, text=True,
                          timeout=300)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["get"]["workers_1_rps"] > 0 and report["get"]["workers_2_rps"] > 0
    assert report["sse"]["deliveries"] == report["sse"]["expected"] == 20 * 5
    assert report["sse"]["p99_ms"] >= report["sse"]["p50_ms"] > 0
