"""The webhook benchmark runs end to end (tiny size): both servers answer, and every 202 is an inbox row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "webhook_bench.py"


def test_quick_webhook_bench_reports_a_ratio_and_a_matching_inbox() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--json"], capture_output=True, text=True,
                          timeout=120)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["bare"]["statuses"] == {"202": 400}
    assert report["gateway"]["statuses"] == {"202": 400}
    assert report["fsync"]["statuses"] == {"202": 400}
    assert report["fsync_ratio"] > 0  # what webhook.fsync = true costs, side by side with the default
    assert report["app"]["statuses"] == {"202": 400}  # the gateway's app with a bare 202 route
    assert report["commit"]["statuses"] == {"202": 400}  # the bare handler plus only the inbox commit
    assert report["commit_ratio"] > 0
    assert set(report["layers_us_per_request"]) == {"aiohttp (bare 202)",
                                                    "floor: + body read + inbox row committed (no app)",
                                                    "gateway app + middleware",
                                                    "webhook handler (token, limit, route, inbox commit)"}
    assert report["rows_match"] and report["inbox_rows"] == report["accepted_202"] == 440
    # The figure itself is machine-dependent (and noisy on a shared box): only its presence is checked here.
    assert report["ratio"] > 0
    assert report["gateway"]["p99_ms"] >= report["gateway"]["p50_ms"] > 0
