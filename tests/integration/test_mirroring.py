"""Issue 4 on the real two-site lab: enable, status with RPO, disable, no key in output."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import rbd

from pve_mirror.ceph import schedule
from pve_mirror.ceph.access import ClusterAccess
from pve_mirror.ceph.cluster import connected
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.ceph.mirror import mirror_info
from tests.integration.sites import Sites, next_vmid
from tests.lab import rbdtools
from tests.lab.ceph_lab import CephSite
from tests.lab.pve_site import KRBD_STORAGE, RBD_STORAGE
from tests.lab.wait import wait_until

MiB = 1024 * 1024


def _info(site: CephSite, image: str) -> tuple[str, str | None, bool]:
    with connected(ClusterAccess(site.name, "admin", str(site.conf))) as cluster:
        info = mirror_info(cluster, ImageSpec("rbd", "", image))
    return info.state, info.mode, info.primary


def _fill(site: CephSite, image: str, seed: int) -> None:
    rbdtools.write(site, image, 0, os.urandom(2 * MiB))
    rbdtools.write(site, image, 20 * MiB + seed * 4096, os.urandom(MiB))


def _status(sites: Sites, kind: str, vmid: int) -> dict[str, Any]:
    result = sites.cli(sites.a, "status", kind, str(vmid), "--output-format", "json")
    assert result.rc in (0, 2), result.err
    data: list[dict[str, Any]] = result.json()
    return data[0]


def test_enable_replicates_librbd_krbd_and_container_disks(sites: Sites) -> None:
    a, b = sites.a, sites.b
    vm, kvm, ct = next_vmid(), next_vmid(), next_vmid()
    a.create_guest("qemu", vm, [(RBD_STORAGE, 32), (RBD_STORAGE, 32)])
    a.create_guest("qemu", kvm, [(KRBD_STORAGE, 32)])
    a.create_guest("lxc", ct, [(KRBD_STORAGE, 32)])
    images = [f"vm-{vm}-disk-0", f"vm-{vm}-disk-1", f"vm-{kvm}-disk-0", f"vm-{ct}-disk-0"]
    for seed, image in enumerate(images):
        _fill(a.ceph, image, seed)

    refused = sites.cli(a, "enable", "ct", str(ct), "--mode", "journal")
    assert refused.rc == 4
    assert "kernel client cannot replay a journal" in refused.err
    assert _info(a.ceph, f"vm-{ct}-disk-0")[0] == "disabled", "refusal changed something"

    for kind, vmid in (("vm", vm), ("vm", kvm), ("ct", ct)):
        result = sites.cli(a, "enable", kind, str(vmid), "--schedule", "1m")
        assert result.rc == 0, result.err
    for image in images:
        assert _info(a.ceph, image) == ("enabled", "snapshot", True)
        assert rbdtools.wait_byte_identical(a.ceph, b.ceph, image)
        assert _info(b.ceph, image) == ("enabled", "snapshot", False)
    listing = a.ceph.cli("rbd", "mirror", "snapshot", "schedule", "ls", "--pool", "rbd",
                         "--image", f"vm-{kvm}-disk-0")  # fmt: skip
    assert "every 1m" in listing


def test_journal_mode_for_a_librbd_vm(sites: Sites) -> None:
    a = sites.a
    vm = next_vmid()
    a.create_guest("qemu", vm, [(RBD_STORAGE, 16)])
    result = sites.cli(a, "enable", "vm", str(vm), "--mode", "journal")
    assert result.rc == 0, result.err
    assert _info(a.ceph, f"vm-{vm}-disk-0") == ("enabled", "journal", True)
    with a.ceph.ioctx() as ioctx, rbd.Image(ioctx, f"vm-{vm}-disk-0", read_only=True) as image:
        features = image.features()
    assert features & rbd.RBD_FEATURE_JOURNALING and features & rbd.RBD_FEATURE_EXCLUSIVE_LOCK


def test_enable_twice_is_enable_once_and_disable_reverses_it(sites: Sites) -> None:
    a, b = sites.a, sites.b
    keep, purge = next_vmid(), next_vmid()
    for vmid in (keep, purge):
        a.create_guest("qemu", vmid, [(RBD_STORAGE, 16)])
        assert sites.cli(a, "enable", "vm", str(vmid), "--schedule", "1m").rc == 0
    again = sites.cli(a, "enable", "vm", str(keep), "--schedule", "1m", "--output-format", "json")
    assert again.rc == 0 and again.json()["plan"]["steps"] == []
    for vmid in (keep, purge):
        rbdtools.wait_replicated(a.ceph, b.ceph, f"vm-{vmid}-disk-0")

    assert sites.cli(a, "disable", "vm", str(keep)).rc == 0
    spec = ImageSpec("rbd", "", f"vm-{keep}-disk-0")
    assert _info(a.ceph, spec.image)[0] == "disabled"
    with connected(ClusterAccess("a", "admin", str(a.ceph.conf))) as cluster:
        assert schedule.list_schedules(cluster, spec) == []
    assert rbdtools.image_exists(b.ceph, spec.image), "the peer copy must be kept"
    assert _info(b.ceph, spec.image)[0] == "disabled"
    assert f"vm:{keep}" not in (a.root / "pve-mirror.cfg").read_text()

    assert sites.cli(a, "disable", "vm", str(purge), "--purge-peer").rc == 0
    assert not rbdtools.image_exists(b.ceph, f"vm-{purge}-disk-0")
    refused = sites.cli(a, "enable", "vm", str(keep))
    assert refused.rc == 4 and "not mirrored" in refused.err, refused.err


def test_status_rpo_grows_without_schedule_and_drops_after_a_snapshot(sites: Sites) -> None:
    a, b = sites.a, sites.b
    vm = next_vmid()
    a.create_guest("qemu", vm, [(RBD_STORAGE, 16)])
    assert sites.cli(a, "enable", "vm", str(vm), "--schedule", "1m").rc == 0
    image = f"vm-{vm}-disk-0"
    rbdtools.wait_replicated(a.ceph, b.ceph, image)
    with connected(ClusterAccess("a", "admin", str(a.ceph.conf))) as cluster:
        schedule.remove_schedules(cluster, ImageSpec("rbd", "", image))

    def rpo() -> float:
        disk = _status(sites, "vm", vm)["disks"][0]
        assert disk["peer_state"] in ("up+replaying", "down+unknown", "up+unknown", "up+stopped")
        return float(disk["rpo_seconds"])

    first = rpo()
    wait_until(lambda: rpo() >= first + 2, timeout=30, what="the RPO age to grow")
    rbdtools.write(a.ceph, image, 0, os.urandom(MiB))
    rbdtools.create_mirror_snapshot(a.ceph, image)
    rbdtools.wait_replicated(a.ceph, b.ceph, image)
    assert rpo() < first + 2


def test_a_stopped_mirror_daemon_is_an_error(sites: Sites) -> None:
    a, b = sites.a, sites.b
    vm = next_vmid()
    a.create_guest("qemu", vm, [(RBD_STORAGE, 16)])
    assert sites.cli(a, "enable", "vm", str(vm), "--schedule", "1m").rc == 0
    rbdtools.wait_replicated(a.ceph, b.ceph, f"vm-{vm}-disk-0")
    sites.lab.stop_mirror_daemon("site-b")
    try:
        guest = wait_until(
            lambda: (g := _status(sites, "vm", vm))["health"] == "ERROR" and g,
            timeout=60,
            what="status to show the stopped daemon",
        )
        assert "daemon is down" in str(guest)
        assert sites.cli(a, "status", "vm", str(vm)).rc == 2
    finally:
        sites.lab.start_mirror_daemon("site-b")
    wait_until(lambda: _status(sites, "vm", vm)["health"] == "OK", timeout=90,
               what="status OK again")  # fmt: skip


def test_no_key_appears_in_any_output(sites: Sites) -> None:
    a = sites.a
    vm = next_vmid()
    a.create_guest("qemu", vm, [(RBD_STORAGE, 16)])
    outputs = []
    for args in (
        ["enable", "vm", str(vm), "--dry-run"],
        ["enable", "vm", str(vm), "--debug"],
        ["status", "--output-format", "json"],
        ["site", "status", "--output-format", "yaml"],
        ["disks", "vm", str(vm), "--output-format", "json"],
        ["guests"],
        ["--debug", "reconcile"],
    ):
        result = sites.cli(a, *args)
        outputs += [result.out, result.err]
    journals = a.root / "pve-mirror" / "journal"
    outputs += [p.read_text() for p in journals.iterdir()] if journals.exists() else []
    outputs.append((a.root / "pve-mirror.cfg").read_text())
    keys = set()
    for keyring in [a.ceph.admin_keyring, sites.b.ceph.admin_keyring]:
        keys |= set(re.findall(r"key\s*=\s*(\S+)", Path(keyring).read_text()))
    assert keys
    for key in keys:
        assert all(key not in text for text in outputs)
