"""The PVE simulator on the real two-site lab, driven through proxmoxer's https backend.

Guests are qemu-io processes on RBD images (librbd): one on primary disks runs and
its heartbeat advances; one on a non-primary mirrored image cannot start (EROFS);
a demotion under a running guest crashes it, and every heartbeat it wrote before
is on the other site after the failover.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import rbd
from proxmoxer.core import ResourceException

from tests.integration import pve_fixtures
from tests.lab import heartbeat
from tests.lab import rbdtools as rt
from tests.lab.ceph_lab import CephLab, CephSite
from tests.lab.pve_site import PveSite
from tests.lab.wait import wait_until

# the fixtures of pve_fixtures.py (until a conftest imports them)
pve_sites = pve_fixtures.pve_sites
new_vmid = pve_fixtures.new_vmid


def wait_task(site: PveSite, upid: str) -> dict[str, Any]:
    """Poll the task until it stopped; give its status."""
    api = site.api()

    def done() -> dict[str, Any] | None:
        st: dict[str, Any] = api.nodes(site.node).tasks(upid).status.get()
        return st if st["status"] == "stopped" else None

    return wait_until(done, timeout=120, what=f"task {upid}", interval=0.05)


def start(site: PveSite, kind: str, vmid: int) -> dict[str, Any]:
    upid = getattr(site.api().nodes(site.node), kind)(vmid).status.start.post()
    assert upid.startswith(f"UPID:{site.node}:")
    return wait_task(site, upid)


def stop(site: PveSite, kind: str, vmid: int) -> dict[str, Any]:
    upid = getattr(site.api().nodes(site.node), kind)(vmid).status.stop.post()
    return wait_task(site, upid)


def current(site: PveSite, kind: str, vmid: int) -> dict[str, Any]:
    data: dict[str, Any] = getattr(site.api().nodes(site.node), kind)(vmid).status.current.get()
    return data


def heartbeats(site: CephSite, image: str) -> list[heartbeat.Record]:
    return heartbeat.read_heartbeats(site.conf, site.pool, image)


def qemu_io_pids(image: str) -> list[int]:
    """Give the pids of live qemu-io processes that opened ``image``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if argv[0] == b"qemu-io" and state != "Z" and any(f"/{image}:".encode() in a for a in argv):
            out.append(int(entry.name))
    return out


@pytest.fixture
def cleanup(ceph_lab: CephLab, pve_sites: dict[str, PveSite]) -> Iterator[list[tuple[str, int]]]:
    """Collect (kind, vmid) to stop, unconfigure and remove (images on both sites) after."""
    guests: list[tuple[str, int]] = []
    yield guests
    a, b = ceph_lab.sites["site-a"], ceph_lab.sites["site-b"]
    for kind, vmid in guests:
        for site in pve_sites.values():
            try:
                if current(site, kind, vmid)["status"] == "running":
                    stop(site, kind, vmid)
            except ResourceException:
                pass
            site.guest_config_path(kind, vmid).unlink(missing_ok=True)
        for n in range(3):
            image = f"vm-{vmid}-disk-{n}"
            for primary, secondary in ((a, b), (b, a)):
                if rt.image_exists(primary, image) and rt.is_primary(primary, image):
                    rt.remove_image(primary, secondary, image)
            for ceph in (a, b):  # leftovers: never-mirrored, non-primary or split
                if rt.image_exists(ceph, image):
                    with contextlib.suppress(rbd.Error), rt.open_image(ceph, image) as img:
                        img.mirror_image_disable(True)
                    with ceph.ioctx() as ioctx:
                        rbd.RBD().remove(ioctx, image)


def test_guest_on_primary_disks_runs_and_writes_heartbeats(
    ceph_lab: CephLab,
    pve_sites: dict[str, PveSite],
    new_vmid: Callable[[], int],
    cleanup: list[tuple[str, int]],
) -> None:
    a, ceph_a = pve_sites["site-a"], ceph_lab.sites["site-a"]
    vmid = new_vmid()
    cleanup.append(("qemu", vmid))
    a.create_guest("qemu", vmid, [("ceph-rbd", 64), ("ceph-krbd", 16)], name="web")

    resources = a.api().cluster.resources.get(type="vm")
    entry = next(r for r in resources if r["vmid"] == vmid)
    # the status there is pvestatd's last cycle: "unknown" until it has seen the guest
    assert (entry["id"], entry["node"]) == (f"qemu/{vmid}", "pve-a1")
    assert entry["status"] in ("unknown", "stopped")

    t0 = time.monotonic()
    st = start(a, "qemu", vmid)
    elapsed = time.monotonic() - t0
    assert st["exitstatus"] == "OK", st
    print(f"guest start through the API until task OK: {elapsed:.2f} s")

    cur = current(a, "qemu", vmid)
    assert (cur["status"], cur["qmpstatus"], cur["name"]) == ("running", "running", "web")
    assert cur["pid"] in qemu_io_pids(f"vm-{vmid}-disk-0")
    assert len(qemu_io_pids(f"vm-{vmid}-disk-1")) == 1

    def listed_running() -> bool:
        listed = a.api().cluster.resources.get(type="vm")
        return bool(next(r for r in listed if r["vmid"] == vmid)["status"] == "running")

    wait_until(
        listed_running,
        timeout=30,
        what="the next status cycle to show it running",
    )

    records = wait_until(
        lambda: r if len(r := heartbeats(ceph_a, f"vm-{vmid}-disk-0")) >= 3 else None,
        timeout=30,
        what="three heartbeats on site-a",
    )
    assert {r.vmid for r in records} == {vmid}
    assert len({r.boot for r in records}) == 1
    assert [r.seq for r in records] == list(range(len(records)))
    assert all(y.time > x.time for x, y in itertools.pairwise(records))
    marker = heartbeat.read_marker(ceph_a.conf, ceph_a.pool, f"vm-{vmid}-disk-1")
    assert marker is not None
    assert (marker.kind, marker.vmid, marker.disk) == ("marker", vmid, 1)

    pids = qemu_io_pids(f"vm-{vmid}-disk-0") + qemu_io_pids(f"vm-{vmid}-disk-1")
    assert stop(a, "qemu", vmid)["exitstatus"] == "OK"
    assert current(a, "qemu", vmid)["status"] == "stopped"
    assert qemu_io_pids(f"vm-{vmid}-disk-0") == qemu_io_pids(f"vm-{vmid}-disk-1") == []
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    # stopped means no more writes: the ring does not grow any more
    after_stop = heartbeats(ceph_a, f"vm-{vmid}-disk-0")
    assert len(after_stop) >= len(records)
    assert stop(a, "qemu", vmid)["exitstatus"] == "OK"  # stopping a stopped VM is fine


def test_container_on_krbd_storage(
    pve_sites: dict[str, PveSite],
    new_vmid: Callable[[], int],
    cleanup: list[tuple[str, int]],
) -> None:
    b = pve_sites["site-b"]
    vmid = new_vmid()
    cleanup.append(("lxc", vmid))
    b.create_guest("lxc", vmid, [("ceph-krbd", 32), ("ceph-krbd", 8)], name="db")
    st = start(b, "lxc", vmid)
    assert st["exitstatus"] == "OK", st
    assert st["type"] == "vzstart"
    cur = current(b, "lxc", vmid)
    assert (cur["status"], cur["name"], cur["type"]) == ("running", "db", "lxc")
    with pytest.raises(ResourceException) as exc:
        b.api().nodes(b.node).lxc(vmid).status.start.post()
    assert exc.value.status_code == 500
    assert f"CT {vmid} already running" in str(exc.value)
    with b.ceph.ioctx() as ioctx, rbd.Image(ioctx, f"vm-{vmid}-disk-0", read_only=True) as img:
        assert not img.features() & rbd.RBD_FEATURE_JOURNALING
    assert stop(b, "lxc", vmid)["exitstatus"] == "OK"
    assert current(b, "lxc", vmid)["status"] == "stopped"


def test_guest_on_non_primary_disk_fails_to_start(
    ceph_lab: CephLab,
    pve_sites: dict[str, PveSite],
    new_vmid: Callable[[], int],
    cleanup: list[tuple[str, int]],
) -> None:
    a, b = pve_sites["site-a"], pve_sites["site-b"]
    ceph_a, ceph_b = ceph_lab.sites["site-a"], ceph_lab.sites["site-b"]
    vmid, vmid2 = new_vmid(), new_vmid()
    cleanup += [("qemu", vmid), ("qemu", vmid2)]
    image = f"vm-{vmid}-disk-0"
    a.create_guest("qemu", vmid, [("ceph-rbd", 64)], name="app")
    rt.enable_snapshot_mirroring(ceph_a, image)
    rt.wait_replicated(ceph_a, ceph_b, image)  # complete non-primary snapshot on site-b
    assert not rt.is_primary(ceph_b, image)

    # the same guest on site-b, on the replicated (non-primary) image
    b.create_guest("qemu", vmid, [("ceph-rbd", 64, image)], name="app")
    st = start(b, "qemu", vmid)
    assert st["status"] == "stopped"
    assert st["exitstatus"] != "OK"
    assert "Read-only file system" in st["exitstatus"], st
    assert "scsi0" in st["exitstatus"]
    assert current(b, "qemu", vmid)["status"] == "stopped"
    assert qemu_io_pids(image) == []

    # a primary first disk does not help: every disk is opened read-write
    b.create_guest("qemu", vmid2, [("ceph-rbd", 16), ("ceph-rbd", 64, image)], name="app2")
    st = start(b, "qemu", vmid2)
    assert "Read-only file system" in st["exitstatus"], st
    assert "scsi1" in st["exitstatus"]
    assert current(b, "qemu", vmid2)["status"] == "stopped"
    assert qemu_io_pids(f"vm-{vmid2}-disk-0") == []


def test_demotion_crashes_guest_and_heartbeats_survive_failover(
    ceph_lab: CephLab,
    pve_sites: dict[str, PveSite],
    new_vmid: Callable[[], int],
    cleanup: list[tuple[str, int]],
    tmp_path: Path,
) -> None:
    a, b = pve_sites["site-a"], pve_sites["site-b"]
    ceph_a, ceph_b = ceph_lab.sites["site-a"], ceph_lab.sites["site-b"]
    vmid = new_vmid()
    cleanup.append(("qemu", vmid))
    image = f"vm-{vmid}-disk-0"
    trace = tmp_path / "hooks"
    hook = a.write_hookscript(f"trace-{vmid}.sh", f'#!/bin/sh\necho "$1 $2" >> {trace}\n')
    a.create_guest("qemu", vmid, [("ceph-rbd", 64)], name="app", hookscript=hook)
    rt.enable_snapshot_mirroring(ceph_a, image)
    rt.wait_replicated(ceph_a, ceph_b, image)
    assert start(a, "qemu", vmid)["exitstatus"] == "OK"
    wait_until(lambda: len(heartbeats(ceph_a, image)) >= 3, timeout=30, what="heartbeats")

    demote_started = time.time()
    rt.demote(ceph_a, image)  # under the running guest: its next write fails
    demote_done = time.time()
    wait_until(
        lambda: current(a, "qemu", vmid)["status"] == "stopped",
        timeout=60,
        what="the guest on the demoted image to stop by itself",
    )
    wait_until(lambda: f"{vmid} post-stop" in trace.read_text(), timeout=30, what="post-stop")
    assert f"{vmid} pre-stop" not in trace.read_text()
    written = heartbeats(ceph_a, image)
    assert len(written) >= 3

    rt.wait_replicated(ceph_a, ceph_b, image)  # the demotion snapshot reached site-b
    rt.promote(ceph_b, image)
    on_b = heartbeats(ceph_b, image)
    before = {r for r in written if r.time < demote_started}
    assert len(before) >= 3
    assert before <= set(on_b)
    # Measured on 16.2: the guest's first write after the demotion (librbd re-takes
    # the exclusive lock) still succeeds on the demoted image; it lies after the
    # demotion snapshot and never reaches site-b. Only the next write fails (EROFS).
    late = [r for r in written if r.time > demote_done]
    assert not set(late) & set(on_b)

    # the guest now runs on site-b, continuing on the same disk
    b.create_guest("qemu", vmid, [("ceph-rbd", 64, image)], name="app")
    assert start(b, "qemu", vmid)["exitstatus"] == "OK"
    later = wait_until(
        lambda: r if len(r := heartbeats(ceph_b, image)) >= len(on_b) + 2 else None,
        timeout=30,
        what="heartbeats on site-b",
    )
    assert set(on_b) <= set(later)
    assert len({r.boot for r in later}) == 2
    assert stop(b, "qemu", vmid)["exitstatus"] == "OK"
