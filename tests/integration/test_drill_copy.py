"""Which data a drill copy holds, checked on the lab's Ceph release (run it per release).

rbd-mirror creates a non-primary mirror snapshot *before* it copies that sync's delta
into the image head (measured on 16.2.15). So the newest complete data is the head
while no sync runs, and the snapshot taken for the running sync while one does
(:mod:`pve_mirror.ceph.copy`). Both cases are compared here, byte for byte, with
the primary's snapshot whose data the copy claims to hold; the running sync is held
still by freezing site-b's rbd-mirror daemon (SIGSTOP) in the middle of it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import uuid
from collections.abc import Iterator

import pytest
import rbd

from pve_mirror.ceph import copy
from pve_mirror.ceph.access import ClusterAccess
from pve_mirror.ceph.cluster import Cluster, connected
from pve_mirror.ceph.imagespec import ImageSpec
from tests.lab import procs, rbdtools
from tests.lab.ceph_lab import CephLab, CephSite
from tests.lab.wait import wait_until

MiB = 1024 * 1024
SIZE = 256 * MiB  # big enough that site-b takes a moment to copy a rewrite of it
ROUNDS = 5


@pytest.fixture
def site_b(ceph_lab: CephLab) -> Iterator[Cluster]:
    """Give pve-mirror's connection to site-b's cluster (no PVE needed: Ceph only)."""
    b = ceph_lab.sites["site-b"]
    access = ClusterAccess("site-b", "admin", str(b.conf), (("keyring", str(b.admin_keyring)),))
    with connected(access) as cluster:
        yield cluster


def newest_copy(site: CephSite, name: str) -> rbdtools.MirrorSnap | None:
    """Give the newest non-primary mirror snapshot of ``name`` on ``site``, complete or not."""
    with rbdtools.open_image(site, name, read_only=True) as image:
        snaps = [s for s in rbdtools.mirror_snaps(image) if not s.is_primary]
    return snaps[-1] if snaps else None


def freeze_mirror_daemon(site: CephSite) -> int:
    """Stop ``site``'s rbd-mirror where it is (SIGSTOP): a sync under way stays so."""
    pid = procs.running_pid(site.daemon_specs()["rbd-mirror"])
    assert pid is not None, f"no rbd-mirror daemon runs at {site.name}"
    os.kill(pid, signal.SIGSTOP)
    return pid


def thaw(pid: int) -> None:
    """Let a frozen rbd-mirror daemon go on (SIGCONT)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def copy_of(site: CephSite, name: str, primary_id: int) -> rbdtools.MirrorSnap | None:
    """Give ``site``'s snapshot for primary snapshot ``primary_id`` once it exists."""
    snap = newest_copy(site, name)
    return snap if snap is not None and snap.primary_snap_id == primary_id else None


def test_the_copy_holds_the_newest_complete_data_with_or_without_a_sync(
    ceph_lab: CephLab, site_b: Cluster
) -> None:
    a, b = ceph_lab.sites["site-a"], ceph_lab.sites["site-b"]
    name = f"drill-copy-{uuid.uuid4().hex[:8]}"
    source = ImageSpec(b.pool, "", name)
    dests = [ImageSpec(b.pool, "", f"{name}-copy{i}") for i in range(3)]
    rbdtools.create_image(a, name, SIZE)
    rbdtools.enable_snapshot_mirroring(a, name)
    try:
        # no sync under way: the head holds the newest complete snapshot
        rbdtools.write(a, name, 0, os.urandom(SIZE))
        first = rbdtools.create_mirror_snapshot(a, name)
        rbdtools.wait_replicated(a, b, name, timeout=120)
        quiet = copy.copy_newest_complete(site_b, source, dests[0])
        assert quiet.source.snap_id is None and quiet.source.held.primary_snap_id == first
        assert rbdtools.checksum(b, dests[0].image) == rbdtools.checksum(a, name, first)

        # a sync under way (held still): the snapshot taken for it holds the previous data
        frozen: int | None = None
        try:
            for _ in range(ROUNDS):
                previous = rbdtools.newest_primary_snap(a, name)
                assert previous is not None
                rbdtools.write(a, name, 0, os.urandom(SIZE))
                taken = rbdtools.create_mirror_snapshot(a, name)
                syncing = wait_until(
                    functools.partial(copy_of, b, name, taken), timeout=60, interval=0.005,
                    what=f"site-b to start copying snapshot {taken}",
                )  # fmt: skip
                frozen = freeze_mirror_daemon(b)
                still = newest_copy(b, name)
                if still is not None and still.id == syncing.id and not still.complete:
                    break
                thaw(frozen)  # it finished first: once more
                frozen = None
                rbdtools.wait_replicated(a, b, name, timeout=120)
            else:
                pytest.fail(f"site-b copied {SIZE // MiB} MiB before its daemon froze, {ROUNDS}x")
            held = copy.copy_newest_complete(site_b, source, dests[1])
            assert held.source.snap_id == syncing.id, held.source
            assert held.source.held.primary_snap_id == previous.id
            want = rbdtools.checksum(a, name, previous.id)
            assert rbdtools.checksum(b, dests[1].image) == want, "not the previous sync's data"
        finally:
            if frozen is not None:
                thaw(frozen)

        # once that sync is complete the head holds it
        rbdtools.wait_replicated(a, b, name, timeout=120)
        done = copy.copy_newest_complete(site_b, source, dests[2])
        assert done.source.snap_id is None and done.source.held.primary_snap_id == taken
        assert rbdtools.checksum(b, dests[2].image) == rbdtools.checksum(a, name, taken)
        for dest in dests:
            assert copy.drill_metadata(site_b, dest) is None  # none asked for here
            with rbdtools.open_image(b, dest.image, read_only=True) as image:
                state = image.mirror_image_get_info()["state"]
                assert state == rbd.RBD_MIRROR_IMAGE_DISABLED  # a copy is never mirrored
    finally:
        for dest in dests:
            copy.remove_if_exists(site_b, dest)
        rbdtools.remove_image(a, b, name)
