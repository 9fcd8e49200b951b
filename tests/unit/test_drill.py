"""DR drill planning without Ceph: VMIDs, image names, the drill guest's config, where
the newest complete data is read from, the drill record, the CLI's guest list."""

from __future__ import annotations

from pathlib import Path

import pytest

from pve_mirror.actions.drill import startup_order
from pve_mirror.actions.drill_config import (
    DRILL_TAG,
    DrillDisk,
    choose_vmids,
    copied,
    drill_config,
    drill_image_name,
    has_drill_tag,
    host_paths,
    image_vmid,
    isolate_net,
    parse_drill_image,
    parse_vmid_range,
    unusable_disks,
)
from pve_mirror.actions.drill_state import DrillGuest, DrillImage, DrillState, DrillStore
from pve_mirror.ceph.copy import choose_source
from pve_mirror.ceph.mirror import MirrorSnapshot
from pve_mirror.cli.cmd_drill import parse_selection
from pve_mirror.errors import ConfigError, NotFoundError, PolicyError, UsageError
from pve_mirror.pve.disks import GuestDisk, resolve_guest_disks
from pve_mirror.pve.guestconfig import GuestConfig
from pve_mirror.pve.root import GuestRef, GuestType
from pve_mirror.pve.storage import StorageConfig, load_storage_config
from tests.unit.pvetree import CT_200, STORAGE_CFG, VM_100, VM_101, VM_102, VM_900

# --- VMIDs and names --------------------------------------------------------------------


def test_vmid_range_defaults_and_parses() -> None:
    assert parse_vmid_range(None) == (9000, 9999)
    assert parse_vmid_range(" 700-710 ") == (700, 710)
    for bad in ("9000", "9999-9000", "99-200", "a-b", "9000-"):
        with pytest.raises(ConfigError, match="drill-vmids"):
            parse_vmid_range(bad)


def test_drill_vmids_are_the_lowest_free_ones_of_the_range() -> None:
    assert choose_vmids(3, (9000, 9999), {9000, 9002, 100}) == [9001, 9003, 9004]
    assert choose_vmids(0, (9000, 9000), {9000}) == []
    with pytest.raises(PolicyError, match="only 1 free VMIDs in the drill range 9000-9002"):
        choose_vmids(2, (9000, 9002), {9000, 9002})


def test_drill_image_names_say_whose_copy_of_what_they_are() -> None:
    name = drill_image_name(9000, "vm-301-disk-0")
    assert name == "vm-9000-pve-mirror-drill-vm-301-disk-0"
    assert parse_drill_image(name) == (9000, "vm-301-disk-0")
    assert image_vmid(name) == 9000  # PVE reads the owner from the prefix
    for other in ("vm-301-disk-0", "base-900-disk-0", "vm-9000-drill-x", "pve-mirror-drill-x"):
        assert parse_drill_image(other) is None
    assert image_vmid("base-900-disk-0") == 900 and image_vmid("drill-copy-1") is None


# --- the drill guest's config -------------------------------------------------------------


@pytest.fixture
def storages(tmp_path: Path) -> StorageConfig:
    """Give the standard test cluster's storage.cfg."""
    (tmp_path / "storage.cfg").write_text(STORAGE_CFG)
    return load_storage_config(tmp_path)


def resolved(storages: StorageConfig, text: str, kind: GuestType = "qemu") -> list[GuestDisk]:
    """Give the disks of a config as the planner resolves them."""
    ref = GuestRef(100, kind, "pve1", Path("/x.conf"))
    return resolve_guest_disks(ref, GuestConfig.parse(text, kind), storages, strict=False)


def drill_disks(disks: list[GuestDisk]) -> list[DrillDisk]:
    """Give a DrillDisk for every mirrored disk of the current config (as the planner does)."""
    out = []
    for disk in disks:
        if copied(disk) and disk.spec and disk.storage:
            image = drill_image_name(9000, disk.spec.image)
            out.append(DrillDisk(disk.key, disk.storage, disk.spec.image, image))
    return out


def test_a_drill_vm_is_isolated_and_on_its_copies(storages: StorageConfig) -> None:
    config = GuestConfig.parse(VM_100 + "hookscript: local:snippets/pve-mirror-hook\n", "qemu")
    config.set("onboot", "1")
    config.set("protection", "1")
    config.set("lock", "backup")
    config.set("tags", "web;prod")
    config.set("vmgenid", "c0ffee00-0000-4000-8000-000000000001")
    disks = drill_disks(resolved(storages, VM_100))
    assert [d.key for d in disks] == ["efidisk0", "scsi0", "tpmstate0"]
    note = "pve-mirror drill 20261201-101500: vm:100 of site-a, data of 2026-12-01T10:14:00Z"
    out = drill_config(config, disks, note=note, bridge=None, vmgenid="genid")
    text = out.render()
    main = out.main.values
    assert text.startswith(f"#{note}\n#Web server%3A production\n"), text
    assert out.main.description and out.main.description.startswith(note)
    assert main["onboot"] == "0" and main["tags"] == f"web;prod;{DRILL_TAG}"
    assert main["net0"] == "virtio=BC:24:11:00:00:01,bridge=vmbr0,link_down=1"
    assert main["scsi0"] == (
        "ceph-vm:vm-9000-pve-mirror-drill-vm-100-disk-0,discard=on,iothread=1,size=32G"
    )
    assert main["efidisk0"].startswith("ceph-vm:vm-9000-pve-mirror-drill-vm-100-disk-1,")
    assert main["tpmstate0"].startswith("ceph-vm:vm-9000-pve-mirror-drill-vm-100-disk-4,")
    assert main["ide2"] == "none,media=cdrom"  # the ISO may not be here
    assert main["vmgenid"] == "genid"
    for gone in ("hookscript", "protection", "lock", "parent", "unused0", "ide0"):
        assert gone not in main, gone  # ide0 is the cloud-init drive
    # snapshots, pending changes, the cloud-init section: a drill guest has none
    assert [s.kind for s in out.sections] == ["main"]
    assert "vm-100-disk" not in text.replace("drill-vm-100-disk", "")
    assert has_drill_tag(out) and not has_drill_tag(config)
    again = GuestConfig.parse(text, "qemu", strict=True)
    assert again.render() == text


def test_a_drill_container_is_unplugged_or_on_the_drill_bridge() -> None:
    config = GuestConfig.parse(CT_200, "lxc")
    disks = [
        DrillDisk("rootfs", "ceph-krbd", "vm-200-disk-0", "vm-9001-pve-mirror-drill-vm-200-disk-0"),
        DrillDisk("mp0", "ceph-vm", "vm-200-disk-1", "vm-9001-pve-mirror-drill-vm-200-disk-1"),
    ]
    out = drill_config(config, disks, note="drill", bridge="vmbr-drill")
    main = out.main.values
    assert main["net0"] == "name=eth0,bridge=vmbr-drill,ip=dhcp,type=veth"
    assert main["rootfs"] == "ceph-krbd:vm-9001-pve-mirror-drill-vm-200-disk-0,size=8G"
    assert main["mp0"] == "ceph-vm:vm-9001-pve-mirror-drill-vm-200-disk-1,mp=/data,size=50G"
    assert "mp1" not in main  # a bind mount: may be production's
    assert main["onboot"] == "0" and main["tags"] == DRILL_TAG
    assert ("lxc.apparmor.profile", "unconfined") in out.main.lxc


def test_a_template_is_not_drilled_and_nets_must_parse() -> None:
    with pytest.raises(PolicyError, match="template"):
        drill_config(GuestConfig.parse(VM_900, "qemu"), [], note="x", bridge=None)
    assert isolate_net("virtio=AA:BB:CC:DD:EE:FF,bridge=vmbr0,link_down=0", None).endswith(
        "link_down=1"
    )
    with pytest.raises(ConfigError, match="cannot isolate"):
        isolate_net("virtio=x,bridge=a,bridge=b", None)


def test_disks_without_data_here_are_named(storages: StorageConfig) -> None:
    bad = unusable_disks(resolved(storages, VM_101))
    assert bad == ["sata0 (local-lvm:vm-101-disk-2): storage 'local-lvm' is lvmthin, not RBD"]
    # CD drives, the cloud-init drive and unused disks are left out, not refused
    assert unusable_disks(resolved(storages, VM_100)) == []
    ct = resolved(storages, CT_200, "lxc")
    assert unusable_disks(ct) == [] and host_paths(ct) == ["mp1 (/srv/share)"]
    assert host_paths(resolved(storages, VM_102)) == ["scsi0 (/dev/sdb)"]


def test_boot_order_comes_from_startup() -> None:
    assert startup_order(GuestConfig.parse("startup: order=3,up=60\n", "qemu")) == 3
    assert startup_order(GuestConfig.parse("memory: 1\n", "qemu")) == 1_000_000


# --- where the newest complete data is ----------------------------------------------------


def snap(
    snap_id: int, *, complete: bool = True, primary: int = 0, state: str = "non-primary"
) -> MirrorSnapshot:
    return MirrorSnapshot(snap_id, state, complete, primary or snap_id - 100, float(snap_id))


def test_the_head_holds_the_newest_complete_data_when_no_sync_runs() -> None:
    source = choose_source([snap(10), snap(12)])
    assert source.snap_id is None and source.held.snap_id == 12 and source.newest_id == 12
    assert source.label == "head"


def test_a_running_sync_is_read_from_the_snapshot_taken_before_it() -> None:
    # rbd-mirror made 14 before writing the head: 14 holds what 12 completed
    source = choose_source([snap(10), snap(12), snap(14, complete=False)])
    assert source.snap_id == 14 and source.held.snap_id == 12
    assert source.label == "snapshot 14"


def test_no_complete_copy_or_a_primary_image_is_refused() -> None:
    with pytest.raises(NotFoundError, match="first sync"):
        choose_source([snap(10, complete=False)])
    with pytest.raises(NotFoundError):
        choose_source([])
    with pytest.raises(PolicyError, match="primary here"):
        choose_source([snap(10), snap(11, state="primary")])


# --- the drill record and the CLI ---------------------------------------------------------


def test_the_drill_record_survives_a_round_trip(tmp_path: Path) -> None:
    store = DrillStore(tmp_path)
    assert store.load() is None
    state = DrillState("20261201-101500", "site-b", "site-a", 1.0)
    guest = DrillGuest("vm:100", "qemu", 100, 9000, "pve-b1", 1)
    guest.images.append(DrillImage("ceph-vm", "vmpool/vm-100-disk-0", "vmpool/x", "scsi0"))
    state.guests.append(guest)
    store.save(state)
    assert store.load() == state
    assert guest.data_time is None  # not copied yet
    store.update(lambda s: s.guests[0].images[0].__setattr__("copy", {"data_time": 5.0}))
    loaded = store.load()
    assert loaded is not None and loaded.guests[0].data_time == 5.0
    assert store.remove() and not store.remove()
    path = store.save_report({"id": state.id, "guests": []})
    assert store.load_report() == {"id": state.id, "guests": []} and path.is_file()
    with pytest.raises(NotFoundError):
        store.load_report("../../etc/passwd")


def test_a_corrupt_drill_record_says_what_to_do(tmp_path: Path) -> None:
    store = DrillStore(tmp_path)
    store.path.parent.mkdir(parents=True)
    store.path.write_text("{not json")
    with pytest.raises(ConfigError, match="drill stop' still finds"):
        store.load()


def test_guests_of_both_kinds_in_one_list() -> None:
    assert parse_selection(["vm", "100", "101", "ct", "200"]) == [
        ("qemu", 100), ("qemu", 101), ("lxc", 200)
    ]  # fmt: skip
    assert parse_selection(["vm:100", "ct:200"]) == [("qemu", 100), ("lxc", 200)]
    for bad in (["100"], ["vm"], ["vm", "ct", "1"], ["vm", "12"], ["ct:abc"]):
        with pytest.raises(UsageError):
            parse_selection(bad)
