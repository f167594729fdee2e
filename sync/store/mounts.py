"""Which filesystem holds the data directory, read from /proc/mounts.

SQLite's WAL mode keeps its index in shared memory (the -shm file, mapped by every process), so every
process must run on one host with the database on a local filesystem; over NFS, SMB or the like, locks
and that mapping are not shared and the mirror can be corrupted (https://www.sqlite.org/wal.html,
"WAL does not work over a network filesystem"). `serve` refuses such a data directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sync.config import ConfigError

MOUNTS = Path("/proc/mounts")
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs", "lustre", "gpfs",
    "fuse.sshfs", "fuse.glusterfs", "fuse.cephfs", "fuse.s3fs", "fuse.rclone", "davfs", "fuse.davfs2",
})
_OCTAL = re.compile(r"\\([0-7]{3})")  # /proc/mounts writes a space in a path as \040


@dataclass(frozen=True)
class Mount:
    point: Path
    fstype: str

    @property
    def is_network(self) -> bool:
        return self.fstype in NETWORK_FILESYSTEMS


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda match: chr(int(match[1], 8)), field)


def mount_of(path: Path, mounts: Path | None = None) -> Mount | None:
    """The mount holding `path` (the longest mount point above it, symlinks resolved); None when the mount
    table (`mounts`, else MOUNTS) cannot be read (not Linux)."""
    try:
        lines = (mounts or MOUNTS).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    target = Path(os.path.realpath(path))
    best: Mount | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(_unescape(fields[1]))
        above = point == target or point in target.parents
        if above and (best is None or len(point.parts) >= len(best.point.parts)):
            best = Mount(point, fields[2])
    return best


def refuse_network_data_dir(data_dir: Path, mounts: Path | None = None) -> None:
    """ConfigError when the data directory is on a network filesystem (see the module docstring)."""
    mount = mount_of(data_dir, mounts)
    if mount is not None and mount.is_network:
        raise ConfigError(
            f"gateway.data_dir: {data_dir} is on a network filesystem ({mount.fstype}, mounted at {mount.point}); "
            "SQLite's WAL mode needs the database on a local disk of the one host that runs every process "
            "(docs/scaling.md: a second host runs as a standby, not on a shared database)"
        )
