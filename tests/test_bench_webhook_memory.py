"""The webhook memory benchmark runs end to end (a 2 MB body): every body is answered 202 on both paths,
and the new path holds far less than the old one, whose parse alone held about 13 bytes per byte."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "webhook_memory_bench.py"


def test_quick_memory_bench_shows_a_large_body_held_in_a_few_copies_at_most() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--json"], capture_output=True, text=True,
                          timeout=120)

    assert done.returncode == 0, done.stderr
    rows = {r["body"]: r for r in json.loads(done.stdout)["rows"]}
    assert set(rows) == {"Issue Hook, ASCII", "Issue Hook, emoji", "Pipeline Hook"}
    # tracemalloc counts allocations, not time: the figures are steady from run to run.
    ascii_edit, ignored = rows["Issue Hook, ASCII"], rows["Pipeline Hook"]
    assert ascii_edit["new_peak"] < 4 * ascii_edit["bytes"] < ascii_edit["old_peak"] / 3
    assert ignored["new_peak"] < 2 * ignored["bytes"]  # never parsed
    assert rows["Issue Hook, emoji"]["new_peak"] < rows["Issue Hook, emoji"]["old_peak"]
