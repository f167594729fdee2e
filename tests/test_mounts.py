"""`serve` refuses a data directory on a network filesystem: SQLite's WAL does not work over one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.cli import main
from sync.store import mounts
from sync.store.mounts import Mount, mount_of


def mount_table(tmp_path: Path, *entries: tuple[str, str]) -> Path:
    table = tmp_path / "mounts"
    lines = ["/dev/sda1 / ext4 rw,relatime 0 0"]
    lines += [f"server:/export {point.replace(' ', chr(92) + '040')} {fstype} rw 0 0" for point, fstype in entries]
    table.write_text("\n".join(lines) + "\n")
    return table


@pytest.mark.parametrize("fstype", ["nfs", "nfs4", "cifs", "smb3", "fuse.sshfs", "9p"])
def test_a_data_dir_under_a_network_mount_is_found_on_it(tmp_path: Path, fstype: str) -> None:
    share = tmp_path / "share dir"
    table = mount_table(tmp_path, (str(share), fstype))
    mount = mount_of(share / "lore-gateway", table)
    assert mount == Mount(share, fstype) and mount.is_network


def test_the_longest_mount_point_wins_and_a_name_prefix_is_not_a_parent(tmp_path: Path) -> None:
    table = mount_table(tmp_path, (str(tmp_path / "nfs"), "nfs4"), (str(tmp_path / "nfs" / "local"), "ext4"))
    assert mount_of(tmp_path / "nfs" / "local" / "data", table) == Mount(tmp_path / "nfs" / "local", "ext4")
    assert mount_of(tmp_path / "nfsx" / "data", table) == Mount(Path("/"), "ext4")


def test_a_symlink_into_a_network_mount_is_followed(tmp_path: Path) -> None:
    share = tmp_path / "share"
    (share / "data").mkdir(parents=True)
    (tmp_path / "link").symlink_to(share / "data")
    table = mount_table(tmp_path, (str(share), "nfs"))
    assert mount_of(tmp_path / "link", table) == Mount(share, "nfs")


def test_without_a_mount_table_nothing_is_known(tmp_path: Path) -> None:
    assert mount_of(tmp_path, tmp_path / "missing") is None


def test_serve_refuses_a_data_dir_on_nfs_with_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    for name in [n for n in os.environ if n.startswith("LORE_GATEWAY_")]:
        monkeypatch.delenv(name)
    data_dir = tmp_path / "share" / "lore-gateway"
    monkeypatch.setenv("LORE_GATEWAY_GATEWAY_DATA_DIR", str(data_dir))
    monkeypatch.setenv("LORE_GATEWAY_GATEWAY_PORT", "1")  # never reached: refused before listening
    monkeypatch.setattr(mounts, "MOUNTS", mount_table(tmp_path, (str(tmp_path / "share"), "nfs4")))
    assert main(["serve"]) == 2
    message = capsys.readouterr().err
    assert "gateway.data_dir" in message and "network filesystem (nfs4" in message
    assert not (data_dir / "lore.db").exists()
