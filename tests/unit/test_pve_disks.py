"""Disk resolution on a synthetic /etc/pve (tests/unit/pvetree.py).

Proxmox's own configs and QEMU command lines check the same code in
tests/conformance/test_disks_oracle.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pve_mirror.errors import ConfigError
from pve_mirror.pve.disks import GuestDisk, resolve_guest_disks
from pve_mirror.pve.root import ConfigRoot
from tests.unit.pvetree import build_tree


def _by_key(disks: list[GuestDisk]) -> dict[tuple[str, str | None], GuestDisk]:
    return {(d.key, d.section): d for d in disks}


def test_synthetic_tree(tmp_path: Path) -> None:
    build_tree(tmp_path)
    root = ConfigRoot(tmp_path)
    refs = root.guests()
    assert [(r.vmid, r.kind, r.node) for r in refs] == [
        (100, "qemu", "pve1"),
        (101, "qemu", "pve2"),
        (102, "qemu", "pve2"),
        (200, "lxc", "pve1"),
        (201, "lxc", "pve2"),
        (900, "qemu", "pve1"),
    ]
    storages = root.storage_config()
    assert storages.warnings == []

    def disks(kind: Any, vmid: int) -> dict[tuple[str, str | None], GuestDisk]:
        ref = root.guest(kind, vmid)
        return _by_key(resolve_guest_disks(ref, root.read_guest(ref), storages))

    vm100 = disks("qemu", 100)
    assert str(vm100["scsi0", None].spec) == "vmpool/vm-100-disk-0"
    assert vm100["scsi0", None].allowed_modes == ("snapshot", "journal")
    assert vm100["tpmstate0", None].krbd is True
    assert vm100["ide0", None].role == "cloudinit" and vm100["ide0", None].mirrorable
    assert not vm100["ide2", None].mirrorable
    assert vm100["unused0", None].mirrorable
    assert str(vm100["scsi1", "PENDING"].spec) == "vmpool/vm-100-disk-3"
    state = vm100["vmstate", "before_upgrade"]
    assert state.role == "vmstate" and state.spec is not None
    assert state.spec.image == "vm-100-state-before_upgrade"
    # Disks already listed from the current config are not repeated for the snapshot.
    assert ("scsi0", "before_upgrade") not in vm100

    vm101 = disks("qemu", 101)
    clone = vm101["scsi0", None]
    assert str(clone.spec) == "vmpool/vm-101-disk-0"
    assert str(clone.parent) == "vmpool/base-900-disk-0"
    krbd = vm101["virtio0", None]
    assert (str(krbd.spec), krbd.krbd, krbd.allowed_modes) == (
        "ctpool/site-a/vm-101-disk-1",
        True,
        ("snapshot",),
    )
    assert vm101["sata0", None].reason == "storage 'local-lvm' is lvmthin, not RBD"

    ct200 = disks("lxc", 200)
    assert ct200["rootfs", None].krbd is True
    assert ct200["mp0", None].krbd is True  # containers always use krbd
    assert ct200["mp0", None].allowed_modes == ("snapshot",)
    assert ct200["mp1", None].reason == "bind mount of a host directory"
    assert str(disks("lxc", 201)["mp0", "PENDING"].spec) == "extpool/vm-201-disk-1"
    assert disks("qemu", 102)["scsi0", None].reason == "host device /dev/sdb, not a storage volume"


def test_unknown_storage_is_an_error_naming_the_disk(tmp_path: Path) -> None:
    tree = build_tree(tmp_path)
    path = tree.vm(103, "memory: 512\nscsi0: ceph-vm:vm-103-disk-0\nscsi1: gone:vm-103-disk-1\n")
    root = ConfigRoot(tmp_path)
    ref = root.guest("qemu", 103)
    config = root.read_guest(ref)
    with pytest.raises(ConfigError) as info:
        resolve_guest_disks(ref, config, root.storage_config())
    assert str(info.value) == (
        f"{path}:3: VM 103 scsi1 (gone:vm-103-disk-1): storage 'gone' is not defined in storage.cfg"
    )
    lenient = resolve_guest_disks(ref, config, root.storage_config(), strict=False)
    assert [d.error is not None for d in lenient] == [False, True]
