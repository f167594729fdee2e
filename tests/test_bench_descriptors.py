"""The descriptor-exhaustion benchmark runs end to end (1 s of exhaustion): both servers come back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "descriptor_bench.py"


def test_quick_descriptor_bench_reports_both_servers_log_volume_and_a_ratio() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--json"], capture_output=True, text=True,
                          timeout=120)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for server in ("bare", "gateway"):
        assert report[server]["log_lines"] >= 1  # exhaustion was reached and reported
        assert report[server]["healthz_after_release_ms"] > 0
    assert report["ratio"] > 0


def test_on_uvloop_descriptor_exhaustion_logs_nothing_and_healthz_comes_back_at_once() -> None:
    # uvloop is the gateway's default loop: libuv refuses the connections it cannot accept by itself.
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", "--loop", "uvloop"],
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for server in ("bare", "gateway"):
        assert report[server]["log_lines"] == 0
        assert 0 < report[server]["healthz_after_release_ms"] < 1000  # asyncio's accept retry waits 1 s
