"""Disk resolution on Proxmox's own VM configs, checked against the QEMU command lines
Proxmox generated from them (the oracle), and on its container configs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pve_mirror.pve.disks import GuestDisk, resolve_guest_disks
from pve_mirror.pve.guestconfig import GuestConfig
from pve_mirror.pve.root import GuestRef
from pve_mirror.pve.storage import StorageConfig, parse_storage_config
from tests.conformance.proxmox_fixtures import CFG2CMD, STORAGE_CFG2CMD, ct_configs

# (drive key, pool[/namespace], image, krbd)
Attached = tuple[str, str, str, bool]


def oracle_rbd_disks(cmd: str) -> set[Attached]:
    """Give the RBD disks of a QEMU command line: librbd blockdevs and /dev/rbd-pve devices."""
    found: set[Attached] = set()

    def walk(node: Any, drive: str) -> None:
        if isinstance(node, dict):
            name = node.get("node-name")
            if isinstance(name, str) and name.startswith("drive-"):
                drive = name.removeprefix("drive-")
            if node.get("driver") == "rbd":
                pool = node["pool"] + (f"/{node['namespace']}" if node.get("namespace") else "")
                found.add((drive, pool, node["image"], False))
            filename = node.get("filename")
            if node.get("driver") == "host_device" and str(filename).startswith("/dev/rbd-pve/"):
                parts = str(filename).split("/")[4:]  # after /dev/rbd-pve/<fsid>/
                found.add((drive, "/".join(parts[:-1]), parts[-1], True))
            for value in node.values():
                walk(value, drive)
        elif isinstance(node, list):
            for value in node:
                walk(value, drive)

    for m in re.finditer(r"-blockdev '(\{.*?\})'", cmd):
        walk(json.loads(m.group(1)), "")
    # Older command lines: -drive 'file=rbd:pool/image:...,id=drive-scsi0,...'
    for m in re.finditer(r"-drive '([^']*)'", cmd):
        opts = m.group(1)
        drive_m = re.search(r"(?:^|,)id=drive-(\w+)", opts)
        drive = drive_m.group(1) if drive_m else ""
        rbd = re.search(r"(?:^|,)file=rbd:([^:,]+)/([^:,]+)", opts)
        if rbd:
            found.add((drive, rbd.group(1), rbd.group(2), False))
        dev = re.search(r"(?:^|,)file=/dev/rbd-pve/[^/]+/([^,]+)/([^/,]+)(?:,|$)", opts)
        if dev:
            found.add((drive, dev.group(1), dev.group(2), True))
    return found


def attached_rbd_disks(disks: list[GuestDisk]) -> set[Attached]:
    """Give the mirrorable disks QEMU attaches: current config, not unused/vmstate/TPM.

    The TPM state goes to swtpm, not to a QEMU blockdev, so the oracle cannot show it.
    """
    found: set[Attached] = set()
    for d in disks:
        if d.section is None and d.mirrorable and d.role not in ("unused", "vmstate"):
            if d.key == "tpmstate0":
                continue
            assert d.spec is not None and d.krbd is not None
            found.add((d.key, d.spec.pool_spec, d.spec.image, d.krbd))
    return found


def cfg2cmd_storages() -> StorageConfig:
    return parse_storage_config(STORAGE_CFG2CMD.read_text(), str(STORAGE_CFG2CMD))


def compare_with_oracle(conf: Path, storages: StorageConfig) -> None:
    cmd = conf.with_name(conf.name + ".cmd").read_text()
    config = GuestConfig.parse(conf.read_text(), "qemu", str(conf))
    ref = GuestRef(8006, "qemu", "node1", conf)
    disks = resolve_guest_disks(ref, config, storages, strict=False)
    assert attached_rbd_disks(disks) == oracle_rbd_disks(cmd)
    for d in disks:  # nothing but RBD images is ever mirrorable
        assert d.mirrorable == (d.storage_type == "rbd" and d.spec is not None)


PAIRS = sorted(p for p in CFG2CMD.glob("*.conf") if p.with_name(p.name + ".cmd").exists())


def test_there_are_rbd_disks_in_the_oracle() -> None:
    total = sum(len(oracle_rbd_disks(p.with_name(p.name + ".cmd").read_text())) for p in PAIRS)
    assert len(PAIRS) > 40 and total >= 8


@pytest.mark.parametrize("conf", PAIRS, ids=lambda p: p.name)
def test_rbd_disks_match_the_qemu_command_line(conf: Path) -> None:
    compare_with_oracle(conf, cfg2cmd_storages())


def test_oracle_reader_sees_krbd_and_librbd() -> None:
    cmd = (CFG2CMD / "simple-rbd.conf.cmd").read_text()
    found = oracle_rbd_disks(cmd)
    assert ("scsi0", "cpool", "vm-8006-disk-0", False) in found
    assert ("scsi4", "cpool", "vm-8006-disk-0", True) in found


@pytest.mark.parametrize("conf", ct_configs(), ids=lambda p: p.name)
def test_container_fixtures(conf: Path) -> None:
    storages = parse_storage_config(
        "rbd: local\n\tpool lpool\n\nrbd: somestore\n\tpool spool\n\tkrbd 0\n\n"
        "dir: preserved\n\tpath /x\n"
    )
    config = GuestConfig.parse(conf.read_text(), "lxc", str(conf))
    ref = GuestRef(101, "lxc", "node1", conf)
    disks = resolve_guest_disks(ref, config, storages, strict=True)
    assert any(d.key == "rootfs" for d in disks)
    for d in disks:
        if d.storage_type == "rbd":
            # Names like "snapshotable-disk-1" are not PVE image names.
            assert not d.mirrorable and "not a PVE RBD volume name" in (d.reason or "")
