"""The CommandRunner seam: how the engine runs another program (today: systemctl).

A command is an argv list handed to exec, never a shell string, so no path or value is ever
re-parsed by a shell; every call has a timeout, and stderr is captured so a failure can say why.
Tests pass a fake runner that records argv instead of running anything.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class CommandError(Exception):
    """The command could not run to completion; `argv` says which one."""

    def __init__(self, argv: Sequence[str], message: str) -> None:
        super().__init__(message)
        self.argv = tuple(argv)
        self.message = message


class CommandNotFound(CommandError):
    """The program is not installed (or not executable) here."""


class CommandTimeout(CommandError):
    """The program ran longer than its timeout and was killed."""


class CommandRunner(Protocol):
    # The timeout is part of the seam on purpose: no caller can forget to bound a command.
    async def run(self, argv: Sequence[str], *, timeout: float) -> CommandResult:  # noqa: ASYNC109
        """Run `argv`; raise CommandNotFound or CommandTimeout, else return its exit status and output."""
        ...


class SubprocessRunner:
    """The real runner: asyncio subprocesses, no shell, stdin closed, output captured."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        # systemctl would otherwise page or colour its output for a terminal we do not have.
        self._env = {**(os.environ if env is None else env), "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}

    async def run(self, argv: Sequence[str], *, timeout: float) -> CommandResult:  # noqa: ASYNC109
        if not argv:
            raise ValueError("an empty command")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
            )
        except (FileNotFoundError, PermissionError) as err:
            raise CommandNotFound(argv, f"{argv[0]}: {err.strerror or err}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            await _kill(proc)
            raise CommandTimeout(argv, f"{' '.join(argv)} did not finish within {timeout:g}s") from None
        except asyncio.CancelledError:
            await asyncio.shield(_kill(proc))
            raise
        return CommandResult(
            proc.returncode if proc.returncode is not None else -1,
            out.decode("utf-8", "replace"),
            err.decode("utf-8", "replace"),
        )


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill and reap, so no zombie outlives the call; safe when the process already ended."""
    with suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()
