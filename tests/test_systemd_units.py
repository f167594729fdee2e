"""The rendered units, judged by systemd itself and by running the gateway inside their syscall sandbox.

`systemd-analyze security --offline=yes` rates the rendered system units (target: exposure <= 1.2,
what Debian's redis-server scores here) and `systemd-analyze verify` parses them, including the
program path with spaces. There is no systemd PID 1 here, so the last tests apply the units'
SystemCallFilter=, SystemCallErrorNumber=, MemoryDenyWriteExecute= and RestrictAddressFamilies= the
way systemd 252 does (seccomp via libseccomp, then exec) and run `serve`, `service wait-ready` and
`service run` under them: the check that CPython and our dependencies live with W^X and the filter.
"""

from __future__ import annotations

import asyncio
import ctypes.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path

import pytest

from gateway.ops.service import DAEMON_UNIT, SYNC_UNIT, TEMPLATE_DIR, TIMER_UNIT, build_spec, render
from sync.config import GatewayConfig, load_config

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
MAX_EXPOSURE = 1.2
HARDENING = [
    "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes",
    "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectKernelLogs=yes", "ProtectControlGroups=yes",
    "ProtectClock=yes", "ProtectHostname=yes", "ProtectProc=invisible", "ProcSubset=pid",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "RestrictNamespaces=yes", "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes", "LockPersonality=yes", "MemoryDenyWriteExecute=yes", "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged @resources", "SystemCallArchitectures=native", "CapabilityBoundingSet=",
    "AmbientCapabilities=", "UMask=0077", "DevicePolicy=closed", "DynamicUser=yes", "StateDirectory=lore-gateway",
]


def rendered(tmp_path: Path, *, timer_only: bool = False, user: bool = False) -> dict[str, Path]:
    """Render the units for an executable under a path with spaces; write them to a temp unit dir."""
    exe = tmp_path / "opt dir" / "bin" / "lore-gateway"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    config = load_config(None, {"LORE_GATEWAY_GATEWAY_DATA_DIR": str(tmp_path / "data")})
    spec = build_spec(config, {}, command=(str(exe),), unit_dir=tmp_path / "units", env_dir=tmp_path / "env",
                      timer_only=timer_only, user=user)
    out = {}
    for file in render(spec):
        file.path.parent.mkdir(parents=True, exist_ok=True)
        file.path.write_bytes(file.content)
        out[file.path.name] = file.path
    return out


def exposure(unit: Path) -> float:
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", str(unit)], capture_output=True, text=True, timeout=60  # type: ignore[list-item]
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match[1])


# --- the templates ---------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", [DAEMON_UNIT, SYNC_UNIT])
def test_both_service_templates_carry_the_whole_hardening_set(unit: str) -> None:
    lines = {line.removeprefix("@SYSTEM@") for line in (TEMPLATE_DIR / unit).read_text().splitlines()}
    missing = [directive for directive in HARDENING if directive not in lines]
    assert not missing


def test_the_daemon_counts_as_started_only_once_readyz_answers() -> None:
    text = (TEMPLATE_DIR / DAEMON_UNIT).read_text()
    assert "Type=exec" in text and "ExecStartPost=@COMMAND@ service wait-ready" in text
    assert "Restart=on-failure" in text and "EnvironmentFile=@ENV_FILE@" in text


def test_the_daemon_may_open_a_descriptor_for_every_stream_the_caps_admit_and_as_many_more() -> None:
    limits = re.findall(r"^LimitNOFILE=(\d+)$", (TEMPLATE_DIR / DAEMON_UNIT).read_text(), re.MULTILINE)
    assert len(limits) == 1
    assert int(limits[0]) >= 2 * GatewayConfig().max_sse_clients + 1024


# --- systemd's judgement --------------------------------------------------------------------------


@needs_analyze
@pytest.mark.parametrize(("timer_only", "unit"), [(False, DAEMON_UNIT), (True, SYNC_UNIT)])
def test_the_rendered_service_exposure_is_at_most_1_2(tmp_path: Path, timer_only: bool, unit: str) -> None:
    level = exposure(rendered(tmp_path, timer_only=timer_only)[unit])
    print(f"systemd-analyze security --offline=yes {unit}: {level}")
    assert level <= MAX_EXPOSURE


@needs_analyze
@pytest.mark.parametrize(("timer_only", "units"), [(False, [DAEMON_UNIT]), (True, [SYNC_UNIT, TIMER_UNIT])])
def test_systemd_analyze_verify_accepts_the_rendered_units(tmp_path: Path, timer_only: bool, units: list[str]) -> None:
    files = rendered(tmp_path, timer_only=timer_only)
    result = subprocess.run(
        [ANALYZE, "verify", "--man=no", *(str(files[u]) for u in units)],  # type: ignore[list-item]
        capture_output=True, text=True, timeout=60,
    )
    # verify checks that the (quoted) program path exists: a path split at its space would fail here.
    assert result.returncode == 0, result.stderr


@needs_analyze
def test_systemd_analyze_verify_accepts_the_rendered_user_unit(tmp_path: Path) -> None:
    files = rendered(tmp_path, user=True)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    result = subprocess.run(
        [ANALYZE, "verify", "--user", "--man=no", str(files[DAEMON_UNIT])],  # type: ignore[list-item]
        capture_output=True, text=True, timeout=60, env={"XDG_RUNTIME_DIR": str(runtime), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr


# --- the gateway inside the units' syscall sandbox ----------------------------------------------------

LIBSECCOMP = ctypes.util.find_library("seccomp")
needs_seccomp = pytest.mark.skipif(
    ANALYZE is None or LIBSECCOMP is None, reason="needs systemd-analyze and libseccomp to emulate the sandbox"
)
SANDBOX_UNAVAILABLE = 77

# Applies a policy (JSON in argv[1]) with libseccomp the way systemd 252 does, then execs argv[2:].
SANDBOX = textwrap.dedent(
    """
    import ctypes, errno, json, os, socket, sys
    policy = json.loads(sys.argv[1])

    class Cmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]

    lib = ctypes.CDLL(policy["lib"], use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Cmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ALLOW, KILL = 0x7FFF0000, 0x80000000
    ERRNO = lambda e: 0x00050000 | e
    EQ, GE, MASKED_EQ = 4, 5, 7

    def rule(ctx, action, name, *cmps):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            return  # not a syscall on this architecture
        if lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), (Cmp * len(cmps))(*cmps) if cmps else None):
            sys.exit(77)

    # Deny rules in a permissive filter; the allow-list filter goes last, since it does not allow seccomp().
    deny = lib.seccomp_init(ALLOW)
    if policy["mdwe"]:
        W, X = 0x2, 0x4
        rule(deny, ERRNO(errno.EPERM), "mmap", Cmp(2, MASKED_EQ, W | X, W | X))
        rule(deny, ERRNO(errno.EPERM), "mprotect", Cmp(2, MASKED_EQ, X, X))
        rule(deny, ERRNO(errno.EPERM), "pkey_mprotect", Cmp(2, MASKED_EQ, X, X))
        rule(deny, ERRNO(errno.EPERM), "shmat", Cmp(2, MASKED_EQ, 0o100000, 0o100000))
    families = {getattr(socket, name) for name in policy["families"]}
    for family in range(64):
        if family not in families:
            rule(deny, ERRNO(errno.EAFNOSUPPORT), "socket", Cmp(0, EQ, family, 0))
    rule(deny, ERRNO(errno.EAFNOSUPPORT), "socket", Cmp(0, GE, 64, 0))
    allow = lib.seccomp_init(ERRNO(policy["errno"]) if policy["errno"] else KILL)
    for name in policy["allow"]:
        rule(allow, ALLOW, name)
    for ctx in (deny, allow):
        if lib.seccomp_load(ctx):
            sys.exit(77)
    os.execv(sys.argv[2], sys.argv[2:])
    """
)


@cache
def syscall_group(name: str) -> frozenset[str]:
    out = subprocess.run([ANALYZE, "syscall-filter", name], capture_output=True, text=True, check=True).stdout  # type: ignore[list-item]
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if word and not word.startswith("#"):
            calls |= syscall_group(word) if word.startswith("@") else {word}
    return frozenset(calls)


def sandbox_policy(unit: Path) -> dict:
    """The seccomp-side settings of a unit file, resolved the way systemd resolves them."""
    allow: set[str] | None = None
    policy: dict = {"lib": LIBSECCOMP, "mdwe": False, "families": [], "errno": 0}
    for line in unit.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "SystemCallFilter":
            deny = value.startswith("~")
            names: set[str] = set()
            for word in value.removeprefix("~").split():
                names |= syscall_group(word) if word.startswith("@") else {word}
            allow = (allow or set()) - names if deny else (allow or set()) | names
        elif key == "SystemCallErrorNumber":
            policy["errno"] = {"EPERM": 1}[value]
        elif key == "MemoryDenyWriteExecute":
            policy["mdwe"] = value == "yes"
        elif key == "RestrictAddressFamilies":
            policy["families"] = value.split()
    assert allow is not None and policy["mdwe"] and policy["families"]
    return policy | {"allow": sorted(allow)}


def sandboxed(tmp_path: Path, unit: Path, *args: str) -> list[str]:
    script = tmp_path / "sandbox.py"
    script.write_text(SANDBOX)
    return [sys.executable, str(script), json.dumps(sandbox_policy(unit)), sys.executable, "-m", "gateway.cli", *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORE_GATEWAY_")}
    env["LORE_GATEWAY_GATEWAY_DATA_DIR"] = str(tmp_path / "data")
    return env | {f"LORE_GATEWAY_{k.upper()}": v for k, v in settings.items()}


@needs_seccomp
def test_the_sandbox_really_refuses_writable_executable_memory_and_netlink(tmp_path: Path) -> None:
    unit = rendered(tmp_path)[DAEMON_UNIT]
    probe = (
        "import mmap, socket\n"
        "try: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC); print('wx')\n"
        "except OSError: print('no-wx')\n"
        "try: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW); print('netlink')\n"
        "except OSError: print('no-netlink')\n"
    )
    command = [*sandboxed(tmp_path, unit)[:-2], "-c", probe]  # python itself, not gateway.cli
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode == SANDBOX_UNAVAILABLE:
        pytest.skip("seccomp filters cannot be loaded here")
    assert result.stdout.split() == ["no-wx", "no-netlink"], result.stderr


@needs_seccomp
async def test_serve_and_its_readiness_check_run_inside_the_daemon_units_sandbox(tmp_path: Path) -> None:
    unit = rendered(tmp_path)[DAEMON_UNIT]
    env = child_env(tmp_path, gateway_port=str(free_port()))
    serve = await asyncio.create_subprocess_exec(
        *sandboxed(tmp_path, unit, "serve"), env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        ready = await asyncio.create_subprocess_exec(
            *sandboxed(tmp_path, unit, "service", "wait-ready", "--timeout", "60s"), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(ready.communicate(), 90)
        if ready.returncode == SANDBOX_UNAVAILABLE:
            pytest.skip("seccomp filters cannot be loaded here")
        assert ready.returncode == 0, err.decode()
        assert b"ready:" in out
    finally:
        serve.terminate()
        _, serve_err = await asyncio.wait_for(serve.communicate(), 30)
    # Killed by SIGSYS would be -31; a clean stop on SIGTERM is 0.
    assert serve.returncode == 0, serve_err.decode()


@needs_seccomp
async def test_a_scheduled_sync_runs_inside_the_sync_units_sandbox(tmp_path: Path, gitlab_url: str) -> None:
    unit = rendered(tmp_path, timer_only=True)[SYNC_UNIT]
    env = child_env(tmp_path, gitlab_url=gitlab_url, gitlab_token="sim-token",
                    gitlab_projects="acme/widgets,acme/gadgets")
    proc = await asyncio.create_subprocess_exec(
        *sandboxed(tmp_path, unit, "--json", "service", "run"), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    if proc.returncode == SANDBOX_UNAVAILABLE:
        pytest.skip("seccomp filters cannot be loaded here")
    assert proc.returncode == 0, err.decode()
    document = json.loads(out)
    assert document["ran"] is True and document["run"]["status"] == "succeeded"
    assert document["run"]["trigger"] == "timer" and document["run"]["counts"]["issues"] == 50
