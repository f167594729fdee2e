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
def test_quick_scaleout_bench_reports_every_setup_with_its_redis_cost_and_delivers_every_event() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--json"], capture_output=True, text=True,
                          timeout=300)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    get = report["get"]
    assert set(get) == {"no redis, 1 process", "redis, --workers 1", "redis, --workers 2", "redis strict, --workers 1"}
    assert all(row["rps"] > 0 and row["over_no_redis"] > 0 for row in get.values())
    assert get["no redis, 1 process"]["redis_commands_per_request"] is None
    # Strict asks Redis on every request; local counting flushes a few times a second.
    assert get["redis strict, --workers 1"]["redis_commands_per_request"] >= 1
    assert get["redis, --workers 1"]["redis_commands_per_request"] < 1
    assert report["sse"]["deliveries"] == report["sse"]["expected"] == 20 * 5
    assert report["sse"]["p99_ms"] >= report["sse"]["p50_ms"] > 0
