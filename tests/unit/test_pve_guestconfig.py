"""Guest config parsing and writing, on configs written here and in tests/unit/pvetree.py.

Proxmox's own configs check the same code in tests/conformance/test_guestconfig_fixtures.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from pve_mirror.errors import ConfigError
from pve_mirror.pve.guestconfig import PENDING, GuestConfig
from tests.unit import pvetree

# A VM with a snapshot it runs from, pending changes and a cloud-init section.
SECTIONS_VM = """\
boot: order=virtio0
cores: 4
ide2: ceph-vm:vm-130-cloudinit,media=cdrom
ipconfig0: ip=192.0.2.30/24,gw=192.0.2.1
memory: 2048
name: app
parent: nightly
virtio0: ceph-vm:vm-130-disk-0,size=16G

[PENDING]
cores: 8

[special:cloudinit]
ipconfig0: ip=dhcp
name: app-old

[nightly]
boot: order=virtio0
cores: 4
memory: 2048
name: app
snaptime: 1764000000
virtio0: ceph-vm:vm-130-disk-0,size=16G
"""

# The current config, then two snapshots; the EFI disk appears in all three.
SNAP_MAIN = """\
#Database%3A do not stop during business hours
bios: ovmf
boot: order=scsi0
efidisk0: ceph-vm:vm-140-disk-1,efitype=4m,pre-enrolled-keys=1,size=1M
machine: pc-q35-9.2
memory: 8192
name: db
parent: after_patch
scsi0: ceph-vm:vm-140-disk-0,iothread=1,size=64G
scsihw: virtio-scsi-single
unused0: old-ceph:vm-140-disk-0
"""
SNAP_BEFORE = """\

[before_patch]
bios: ovmf
efidisk0: ceph-vm:vm-140-disk-1,efitype=4m,pre-enrolled-keys=1,size=1M
machine: pc-q35-9.2
memory: 8192
name: db
scsi0: ceph-vm:vm-140-disk-0,iothread=1,size=64G
snaptime: 1760000000
"""
SNAP_AFTER = """\

[after_patch]
bios: ovmf
efidisk0: ceph-vm:vm-140-disk-1,efitype=4m,pre-enrolled-keys=1,size=1M
machine: pc-q35-9.2
memory: 8192
name: db
parent: before_patch
scsi0: ceph-vm:vm-140-disk-0,iothread=1,size=64G
snaptime: 1760003600
"""
SNAPSHOT_VM = SNAP_MAIN + SNAP_BEFORE + SNAP_AFTER

OWN_CONFIGS = [
    ("qemu", name, text)
    for name, text in [
        ("vm-100", pvetree.VM_100),
        ("vm-101", pvetree.VM_101),
        ("vm-102", pvetree.VM_102),
        ("vm-900", pvetree.VM_900),
        ("sections", SECTIONS_VM),
        ("snapshots", SNAPSHOT_VM),
    ]
] + [("lxc", "ct-200", pvetree.CT_200), ("lxc", "ct-201", pvetree.CT_201)]


@pytest.mark.parametrize(("kind", "name", "text"), OWN_CONFIGS, ids=[c[1] for c in OWN_CONFIGS])
def test_own_configs_parse_cleanly_and_round_trip(kind: Any, name: str, text: str) -> None:
    config = GuestConfig.parse(text, kind, f"/x/{name}.conf", strict=True)
    assert config.warnings == []
    assert config.render() == text
    assert config.render_bytes() == text.encode()
    assert config.main.values


def test_round_trip_keeps_crlf_tabs_and_missing_final_newline() -> None:
    text = "memory: 512\r\nname:\tweird  \r\n\n\n#note\nscsi0: ceph-vm:vm-1-disk-0"
    config = GuestConfig.parse(text, "qemu", "/x/1.conf")
    assert config.render() == text


def test_sections_of_a_vm() -> None:
    config = GuestConfig.parse(SECTIONS_VM, "qemu", "/x/130.conf", strict=True)
    assert config.get("parent") == "nightly"
    assert config.pending is not None and config.pending.get("cores") == "8"
    assert config.get("cores", PENDING) == "8"
    assert config.get("cores") == "4"
    assert config.special["cloudinit"].get("name") == "app-old"
    assert list(config.snapshots) == ["nightly"]
    assert config.get("snaptime", "nightly") == "1764000000"
    fleecing = "memory: 512\n\n[special:fleecing]\nfleecing-images: ceph-vm:vm-130-fleece-0\n"
    config = GuestConfig.parse(fleecing, "qemu", "/x/130.conf", strict=True)
    assert config.special["fleecing"].get("fleecing-images") == "ceph-vm:vm-130-fleece-0"


def test_set_keeps_every_other_byte() -> None:
    config = GuestConfig.parse(SNAPSHOT_VM, "qemu", "/x/140.conf", strict=True)
    config.set_volume("unused0", "mirror:vm-140-disk-0")
    config.set("hookscript", "local:snippets/pve-mirror-hook")
    config.set_volume("efidisk0", "dr:vm-140-disk-1", "before_patch")
    efi = "efidisk0: ceph-vm:vm-140-disk-1,"
    # The new key goes after the last key of the current config, before the first section.
    assert config.render() == (
        SNAP_MAIN.replace(
            "unused0: old-ceph:vm-140-disk-0\n",
            "unused0: mirror:vm-140-disk-0\nhookscript: local:snippets/pve-mirror-hook\n",
        )
        + SNAP_BEFORE.replace(efi, "efidisk0: dr:vm-140-disk-1,")
        + SNAP_AFTER
    )
    again = GuestConfig.parse(config.render(), "qemu", "/x/140.conf", strict=True)
    assert again.get("hookscript") == "local:snippets/pve-mirror-hook"
    assert again.get("efidisk0") == again.get("efidisk0", "after_patch")
    assert again.main.description == "Database: do not stop during business hours"


def test_description_is_decoded() -> None:
    config = GuestConfig.parse("#Line one%3A ok\n#two\nmemory: 512\n", "qemu", "100.conf")
    assert config.main.description == "Line one: ok\ntwo"


def test_container_sections_and_raw_lxc_keys() -> None:
    text = (
        "hostname: a\nlxc.apparmor.profile: unconfined\nlxc.mount.entry = /a b none bind 0 0\n"
        "rootfs: store:vm-100-disk-0,size=8G\n\n[pve:pending]\nmemory: 1024\n\n"
        "[snap1]\nrootfs: store:vm-100-disk-0,size=8G\nsnaptime: 1\n"
    )
    config = GuestConfig.parse(text, "lxc", "/x/lxc/100.conf", strict=True)
    assert config.main.lxc == [
        ("lxc.apparmor.profile", "unconfined"),
        ("lxc.mount.entry", "/a b none bind 0 0"),
    ]
    assert config.get("memory", PENDING) == "1024"
    assert list(config.snapshots) == ["snap1"]
    assert config.vmid == 100
    assert config.render() == text


def test_replace_storage_everywhere() -> None:
    text = (
        "scsi0: rbd:vm-100-disk-0,size=4G\nide2: none,media=cdrom\nunused0: rbd:vm-100-disk-1\n"
        "virtio0: file=rbd:vm-100-disk-2,iothread=1\nscsi1: volume=rbd:vm-100-disk-3\n"
        "\n[PENDING]\nscsi2: rbd:vm-100-disk-4\n\n[s1]\nvmstate: rbd:vm-100-state-s1\n"
    )
    config = GuestConfig.parse(text, "qemu", "100.conf", strict=True)
    assert config.replace_storage("rbd", "dr") == 6
    assert config.render() == text.replace("rbd:", "dr:")


def test_set_and_delete_refuse_nonsense() -> None:
    config = GuestConfig.parse("memory: 512\n", "qemu", "100.conf")
    with pytest.raises(ConfigError):
        config.set("memory", "1\n2")
    with pytest.raises(ConfigError):
        config.set("Bad Key", "1")
    with pytest.raises(ConfigError):
        config.set_volume("scsi0", "x:y")
    with pytest.raises(ConfigError):
        config.section("nosuch")
    assert config.delete("memory")
    assert config.render() == ""


def test_duplicate_key_last_wins_with_warning() -> None:
    config = GuestConfig.parse("memory: 512\nmemory: 1024\n", "qemu", "/x/100.conf")
    assert config.get("memory") == "1024"
    assert config.warnings == ["/x/100.conf:2: duplicate key 'memory' (the later one is used)"]
