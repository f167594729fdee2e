"""CI's rule for skipped tests: only the reasons listed here may skip; any other skip fails the run.

A test that skips where it should run hides a broken feature (the Redis tests once skipped silently on a
fresh machine), so `.ci/run` sets LORE_CI_NO_SKIPS=1 and these hooks (imported by conftest.py) turn an
unlisted skip into a failed session, exit code 1. Without the variable a skip stays a skip.
"""

from __future__ import annotations

import os

import pytest

ENV_SWITCH = "LORE_CI_NO_SKIPS"
# Reasons that depend on the machine, not on our code: the start of each allowed skip message.
ALLOWED_REASONS: tuple[str, ...] = (
    "systemd-analyze is not installed",  # systemd's own tool, absent from minimal containers
    "needs systemd-analyze and libseccomp",
    "seccomp filters cannot be loaded here",  # a container that forbids loading seccomp filters
)

_unlisted: list[tuple[str, str]] = []


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _reason(report)
        if not reason.startswith(ALLOWED_REASONS):
            _unlisted.append((report.nodeid, reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get(ENV_SWITCH) == "1" and _unlisted and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if os.environ.get(ENV_SWITCH) != "1" or not _unlisted:
        return
    terminalreporter.section(f"skipped without an allowed reason ({ENV_SWITCH}=1 makes this a failure)")
    for nodeid, reason in _unlisted:
        terminalreporter.line(f"{nodeid}: {reason}")
    terminalreporter.line("allowed reasons are listed in tests/skip_policy.py")
