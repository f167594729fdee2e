"""The SSE fan-out benchmark runs end to end (tiny size): both servers deliver every event to every client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "sse_bench.py"


def test_quick_sse_bench_delivers_every_event_to_every_client_and_reports_a_ratio() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--json"], capture_output=True, text=True,
                          timeout=120)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for server in ("bare", "gateway"):
        phase = report[server]
        assert phase["deliveries"] == phase["expected"] == 20 * 20
        assert phase["disconnected"] == 0
        assert phase["p99_ms"] >= phase["p50_ms"] > 0
    # The figure itself is machine-dependent (and noisy on a shared box): only its presence is checked here.
    assert report["ratio"] > 0


def test_the_memory_breakdown_reports_both_servers_by_file_and_by_source_line() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--memory", "--clients", "20", "--json"], capture_output=True,
                          text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for server in ("bare", "gateway"):
        assert report[server]["traced_bytes_per_stream"] > 0
        assert report[server]["files"] and report[server]["sites"]
        site, size, blocks = report[server]["sites"][0]
        assert ".py:" in site and size > 0 and blocks > 0
