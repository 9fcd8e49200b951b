"""``status`` on the lab: the RPO is the age of the data the peer holds, read image by
image or from the pool listings, and a late-looking listed disk is read exactly."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import time
from collections.abc import Iterator

from pve_mirror.actions.context import SiteContext
from pve_mirror.actions.status import DiskStatus, collect_status
from pve_mirror.ceph import schedule
from pve_mirror.ceph.access import ClusterAccess
from pve_mirror.ceph.cluster import connected
from pve_mirror.ceph.imagespec import ImageSpec
from tests.integration.sites import Sites, next_vmid
from tests.lab import procs, rbdtools
from tests.lab.ceph_lab import CephSite
from tests.lab.pve_site import RBD_STORAGE
from tests.lab.wait import wait_until

# rbd-mirror writes image statuses every 30 s; the listed RPO follows within that.
STATUS_WRITE_S = 30.0


@contextlib.contextmanager
def mirror_daemon_frozen(site: CephSite) -> Iterator[None]:
    """Hold ``site``'s rbd-mirror still (SIGSTOP) for the block: nothing is copied."""
    pid = procs.running_pid(site.daemon_specs()["rbd-mirror"])
    assert pid is not None, f"no rbd-mirror daemon runs at {site.name}"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def snap_time(site: CephSite, image: str, snap_id: int) -> float:
    """Give when snapshot ``snap_id`` of ``image`` was taken on ``site`` (epoch seconds)."""
    with rbdtools.open_image(site, image, read_only=True) as handle:
        stamp: dt.datetime = handle.get_snap_timestamp(snap_id)
    return stamp.replace(tzinfo=dt.UTC).timestamp()


def guest_without_schedule(sites: Sites) -> tuple[int, str]:
    """Give a replicated VM (one disk, schedule 1m) whose schedule is then removed."""
    a, b = sites.a, sites.b
    vmid = next_vmid()
    a.create_guest("qemu", vmid, [(RBD_STORAGE, 8)])
    assert sites.cli(a, "enable", "vm", str(vmid), "--schedule", "1m").rc == 0
    image = f"vm-{vmid}-disk-0"
    rbdtools.wait_replicated(a.ceph, b.ceph, image)
    with connected(ClusterAccess("a", "admin", str(a.ceph.conf))) as cluster:
        schedule.remove_schedules(cluster, ImageSpec("rbd", "", image))
    return vmid, image


def disk_status(sites: Sites, vmid: int, *, exact: bool, now: float | None = None) -> DiskStatus:
    """Give the status of the guest's disk, read image by image or from the listings."""
    with SiteContext.load(sites.a.root) as ctx:
        statuses = collect_status(ctx, [ctx.guest("vm", vmid)], now, exact=exact)
    return statuses[0].disks[0]


def test_rpo_is_the_age_of_the_data_not_of_the_copy(sites: Sites) -> None:
    a, b = sites.a, sites.b
    vmid, image = guest_without_schedule(sites)
    with mirror_daemon_frozen(b.ceph):
        taken_id = rbdtools.create_mirror_snapshot(a.ceph, image)
        taken = snap_time(a.ceph, image, taken_id)
        # The copy starts at least 3 s after the snapshot it copies was taken.
        wait_until(lambda: time.time() > taken + 3, timeout=10, what="3 s to pass")
    _, copy_id = rbdtools.wait_replicated(a.ceph, b.ceph, image)
    copied = snap_time(b.ceph, image, copy_id)
    assert copied >= taken + 3

    exact = disk_status(sites, vmid, exact=True)
    assert exact.last_sync is not None and abs(exact.last_sync - taken) < 1, (exact, taken)

    def listed() -> DiskStatus | None:
        disk = disk_status(sites, vmid, exact=False)
        return disk if disk.last_sync is not None and disk.last_sync >= int(taken) else None

    disk = wait_until(listed, timeout=STATUS_WRITE_S + 15, what="the listed RPO to follow")
    assert disk.last_sync is not None and abs(disk.last_sync - taken) < 1, (disk, taken)
    assert disk.health == "OK" and disk.peer_role == "non-primary", disk


def test_a_late_looking_listed_disk_is_read_exactly(sites: Sites) -> None:
    a, b = sites.a, sites.b
    vmid, image = guest_without_schedule(sites)
    first = rbdtools.newest_primary_snap(a.ceph, image)
    assert first is not None
    before = snap_time(a.ceph, image, first.id)
    wait_until(
        lambda: (disk_status(sites, vmid, exact=False).last_sync or 0) >= int(before),
        timeout=STATUS_WRITE_S + 15,
        what="the listed RPO to show the first copy",
    )
    # A second copy 25 s later: until rbd-mirror writes its status again, the listing
    # still names the first one, 25 s older.
    wait_until(lambda: time.time() > before + 25, timeout=30, what="25 s to pass")
    taken_id = rbdtools.create_mirror_snapshot(a.ceph, image)
    taken = snap_time(a.ceph, image, taken_id)
    rbdtools.wait_replicated(a.ceph, b.ceph, image)

    # Schedule 1m: late beyond 120 s. Listed, the disk looks 125 s late; it is 100 s.
    disk = disk_status(sites, vmid, exact=False, now=taken + 100)
    assert disk.health == "OK", disk
    assert disk.rpo_seconds is not None and abs(disk.rpo_seconds - 100) < 1.5, disk

    late = disk_status(sites, vmid, exact=False, now=taken + 130)
    assert late.health == "WARN" and "over twice the schedule (60 s)" in late.problems[0], late
