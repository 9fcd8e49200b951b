"""Issue 11, item 1 on the real two-site lab: after a forced failover from site-a to site-b,
failback on the wrong site (site-b) is refused with nothing changed, and a resync on the
right site (site-a) keeps the copy it discards recoverable from the trash.

One forced failover serves both parts (it is the expensive step): site-a goes down,
site-b promotes by force and runs the guest, site-a comes back still primary.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

import pytest
import rbd

from tests.integration.dr_helpers import (
    Guest,
    create,
    enable,
    open_journals,
    running,
    runs,
    start,
    stop_everywhere,
    sync,
    wait_beats,
)
from tests.integration.sites import Sites, next_vmid
from tests.lab import rbdtools
from tests.lab.ceph_lab import CephSite
from tests.lab.pve_site import RBD_STORAGE

DELAY_KEY = "conf_rbd_mirroring_delete_delay"
SEVEN_DAYS = 7 * 24 * 3600


@pytest.fixture
def forced(sites: Sites) -> Iterator[tuple[Sites, Guest, int]]:
    """Give the sites after a forced failover of a fresh VM from site-a to site-b (site-a
    back, its image still primary), the VM and its boot id on site-b."""
    a, b = sites.a, sites.b
    vm = create(a, "qemu", next_vmid(), [RBD_STORAGE])
    try:
        enable(sites, a, [vm])
        start(a, vm)
        boot_a = wait_beats(a, vm, 3)
        sync(sites, a)
        # a forced promote needs a complete copy (a busy machine may still be making it)
        rbdtools.wait_replicated(a.ceph, b.ceph, vm.image)
        sites.lab.stop_site("site-a")
        try:
            done = sites.cli(b, "failover", "--force", "vm", str(vm.vmid))
            assert done.rc == 0, done.out + done.err
            boot_b = wait_beats(b, vm, 3, exclude={boot_a})
        finally:
            sites.lab.start_site("site-a")
            a.start()
        assert sites.init(a).rc == 0
        assert rbdtools.is_primary(a.ceph, vm.image) and rbdtools.is_primary(b.ceph, vm.image)
        yield sites, vm, boot_b
    finally:
        stop_everywhere(sites, [vm])


def image_id(site: CephSite, name: str) -> str:
    with rbdtools.open_image(site, name, read_only=True) as image:
        return str(image.id())


def trash(site: CephSite, name: str) -> list[dict[str, object]]:
    with site.ioctx() as ioctx:
        return [e for e in rbd.RBD().trash_list(ioctx) if e["name"] == name]


def test_wrong_site_failback_is_refused_and_a_resync_keeps_a_copy(
    forced: tuple[Sites, Guest, int],
) -> None:
    sites, vm, boot_b = forced
    a, b = sites.a, sites.b
    ids = {site.name: image_id(site.ceph, vm.image) for site in (a, b)}
    before = open_journals(b, "failback")

    # --- the wrong site: site-b holds the newest data ----------------------------------
    for extra in ((), ("--dry-run",)):
        wrong = sites.cli(b, "failback", "--all", "--yes", *extra)
        assert wrong.rc == 4, wrong.out + wrong.err
        assert f"rbd/{vm.image}" in wrong.err, wrong.err
        assert "site-b: data of" in wrong.err and "site-a: data of" in wrong.err, wrong.err
        assert "nothing changed" in wrong.err and "--discard-newer-here" in wrong.err
        assert "site-b forced a failover from site-a" in wrong.err, wrong.err
    assert running(b, vm), "a refused failback stopped site-b's guest"
    assert rbdtools.is_primary(b.ceph, vm.image), "a refused failback demoted site-b's image"
    assert rbdtools.is_primary(a.ceph, vm.image)
    assert not open_journals(b, "failback") - before, "a refused failback opened a journal"
    assert {s.name: image_id(s.ceph, vm.image) for s in (a, b)} == ids
    wait_beats(b, vm, 2, exclude=set(runs(b, vm)) - {boot_b})  # site-b's run goes on
    no_all = sites.cli(b, "failback", "--all", "--discard-newer-here")
    assert no_all.rc == 2, no_all.out + no_all.err
    # the override passes the authority check, but resync never demotes under a live guest
    guarded = sites.cli(b, "resync", "--discard-newer-here", "vm", str(vm.vmid))
    assert guarded.rc == 1, guarded.out + guarded.err
    assert "--discard-newer-here given" in guarded.err, guarded.err
    assert "refusing to demote" in guarded.out, guarded.out
    assert rbdtools.is_primary(b.ceph, vm.image) and running(b, vm)

    # --- the right site: site-a wrote after the split (a real split-brain) -------------
    mine = os.urandom(4096)
    rbdtools.write(a.ceph, vm.image, 8 << 20, mine)
    rbdtools.create_mirror_snapshot(a.ceph, vm.image)
    discarded = rbdtools.checksum(a.ceph, vm.image)
    with a.ceph.ioctx() as ioctx, contextlib.suppress(KeyError, rbd.ObjectNotFound):
        rbd.RBD().pool_metadata_remove(ioctx, DELAY_KEY)  # the resync must set it itself
    sync(sites, b)

    dry = sites.cli(a, "resync", "--yes", "vm", str(vm.vmid), "--dry-run")
    assert dry.rc == 0, dry.out + dry.err
    assert "split-brain" in dry.out and "discards what site-a wrote" in dry.out, dry.out

    everything = sites.cli(a, "resync", "--all", "--yes")
    if everything.rc == 4:
        # A lab kept between runs holds other tests' guests, which --all takes too; one
        # in a state that refuses stops the run before anything changes.
        assert f"rbd/{vm.image}" not in everything.err, everything.err
    else:
        assert everything.rc == 1, everything.out + everything.err
        assert "naming the guest" in everything.out, everything.out
    assert image_id(a.ceph, vm.image) == ids["site-a"], "--all --yes resynced a split image"
    assert not trash(a.ceph, vm.image)

    named = sites.cli(a, "resync", "--yes", "vm", str(vm.vmid))
    assert named.rc == 0, named.out + named.err
    with a.ceph.ioctx() as ioctx:
        assert int(rbd.RBD().pool_metadata_get(ioctx, DELAY_KEY)) >= SEVEN_DAYS
    restore = re.search(r"rbd trash restore --image (\S+) ([\w./-]+)", named.err)
    assert restore, named.err
    entries = trash(a.ceph, vm.image)
    assert [e["id"] for e in entries] == [ids["site-a"]], entries
    assert image_id(a.ceph, vm.image) != ids["site-a"], "no new copy after the resync"
    assert running(b, vm) and not running(a, vm)

    a.ceph.cli("rbd", "trash", "restore", "--image", restore.group(1), restore.group(2))
    try:
        assert rbdtools.checksum(a.ceph, restore.group(1)) == discarded
    finally:
        with a.ceph.ioctx() as ioctx:
            rbd.RBD().remove(ioctx, restore.group(1))
