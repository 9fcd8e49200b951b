"""The pool-listing paths that keep a site of a thousand disks fast give the same plans
and statuses as reading image by image, on the lab."""

from __future__ import annotations

import pytest

from pve_mirror.actions import mirror_facts
from pve_mirror.actions.context import SiteContext
from pve_mirror.actions.mirroring import EnableOptions, plan_enable
from pve_mirror.actions.status import collect_status
from pve_mirror.ceph import schedule
from pve_mirror.ceph.access import ClusterAccess
from pve_mirror.ceph.cluster import connected
from pve_mirror.ceph.imagespec import ImageSpec
from tests.integration.sites import Sites, next_vmid
from tests.lab import rbdtools
from tests.lab.pve_site import RBD_STORAGE


def _plan(sites: Sites, vmids: list[int]) -> list[str]:
    with SiteContext.load(sites.a.root) as ctx:
        report = plan_enable(ctx, ctx.guests("vm", vmids), EnableOptions(schedule="5m"))
    return sorted(s.id for s in report.plan.steps)


def test_listing_and_one_by_one_plan_alike(sites: Sites, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = sites.a, sites.b
    fresh, unscheduled, done = next_vmid(), next_vmid(), next_vmid()
    for vmid in (fresh, unscheduled, done):
        a.create_guest("qemu", vmid, [(RBD_STORAGE, 4)], node=a.spread_node(vmid))
    assert sites.cli(a, "enable", "vm", str(unscheduled), str(done), "--schedule", "5m").rc == 0
    with connected(ClusterAccess("a", "admin", str(a.ceph.conf))) as cluster:
        schedule.remove_schedules(cluster, ImageSpec("rbd", "", f"vm-{unscheduled}-disk-0"))
    vmids = [fresh, unscheduled, done]

    one_by_one = _plan(sites, vmids)
    monkeypatch.setattr(mirror_facts, "ONE_BY_ONE_UP_TO", 0)
    monkeypatch.setattr(mirror_facts, "LISTING_SHARE", 10**6)
    listed = _plan(sites, vmids)

    assert listed == one_by_one
    assert listed == sorted(
        [
            f"enable-image:rbd/vm-{fresh}-disk-0",
            f"record:vm:{fresh}",
            f"schedule:rbd/vm-{unscheduled}-disk-0",
        ]
    )
    rbdtools.wait_replicated(a.ceph, b.ceph, f"vm-{done}-disk-0")


def test_listing_and_exact_status_alike(sites: Sites) -> None:
    a, b = sites.a, sites.b
    vmids = [next_vmid() for _ in range(3)]
    for vmid in vmids:
        a.create_guest("qemu", vmid, [(RBD_STORAGE, 4)] * 2, node=a.spread_node(vmid))
    assert sites.cli(a, "enable", "vm", *map(str, vmids), "--schedule", "5m").rc == 0
    for vmid in vmids:
        for disk in range(2):
            rbdtools.wait_replicated(a.ceph, b.ceph, f"vm-{vmid}-disk-{disk}")
    fields = ("guest", "key", "image", "mode", "role", "peer_role", "health")
    with SiteContext.load(a.root) as ctx:
        refs = ctx.guests("vm", vmids)
        now = 1e10  # far ahead: every disk looks late, and is read exactly
        listed = collect_status(ctx, refs, now, exact=False)
        exact = collect_status(ctx, refs, now, exact=True)
    rows = [[{f: getattr(d, f) for f in fields} for d in g.disks] for g in listed]
    assert rows == [[{f: getattr(d, f) for f in fields} for d in g.disks] for g in exact]
    assert [d.last_sync for g in listed for d in g.disks] == [
        d.last_sync for g in exact for d in g.disks
    ]
    assert {d.role for g in listed for d in g.disks} == {"primary"}
    assert {d.peer_role for g in listed for d in g.disks} == {"non-primary"}
    assert {d.health for g in listed for d in g.disks} == {"WARN"}  # 1e10 is late indeed
