"""Issue 11, items 3, 7 and 10, on the real two-site lab: an unrelated guest with the
same VMID at the target is never moved, a planned failover refused in preflight leaves
the guests running at the source, and a guest's mirror mode and schedule survive a
failover and the failback.
"""

from __future__ import annotations

import json
import os

from pve_mirror.pve.siteconfig import load_site_config
from tests.integration.dr_helpers import (
    create,
    enable,
    open_journals,
    running,
    start,
    start_requests,
    stop_everywhere,
    sync,
    wait_beats,
)
from tests.integration.sites import Sites, next_vmid
from tests.lab import rbdtools
from tests.lab.pve_site import KRBD_STORAGE, RBD_STORAGE, PveSite


def _schedules(site: PveSite, image: str) -> list[str]:
    """Give the mirror snapshot intervals Ceph keeps for ``rbd/<image>`` at ``site``."""
    listing = site.ceph.cli(
        "rbd", "mirror", "snapshot", "schedule", "ls", "--pool", "rbd", "--image", image
    )  # fmt: skip
    return sorted(line.split("every ", 1)[1].split()[0] for line in listing.splitlines()
                  if "every " in line)  # fmt: skip


def _mode(site: PveSite, image: str) -> str:
    out = site.ceph.cli("rbd", "info", f"rbd/{image}", "--format", "json")
    return str(json.loads(out).get("mirroring", {}).get("mode", ""))


def test_mode_and_schedule_survive_a_failover_and_the_failback(sites: Sites) -> None:
    a, b = sites.a, sites.b
    journal = create(a, "qemu", next_vmid(), [RBD_STORAGE])
    minute = create(a, "qemu", next_vmid(), [RBD_STORAGE])
    try:
        done = sites.cli(a, "enable", "vm", str(journal.vmid), "--mode", "journal")
        assert done.rc == 0, done.out + done.err
        enable(sites, a, [minute], schedule="1m")
        sync(sites, a)

        plan = sites.cli(b, "failover", "--dry-run", "vm", str(journal.vmid), str(minute.vmid))
        assert plan.rc == 0, plan.out + plan.err
        assert "preflight passed" in plan.out, plan.out
        assert "(journal mode)" in plan.out and "schedule 1m" in plan.out, plan.out

        moved = sites.cli(b, "failover", "vm", str(journal.vmid), str(minute.vmid))
        assert moved.rc == 0, moved.out + moved.err
        at_b = load_site_config(b.root)
        entry_j, entry_m = at_b.guest("qemu", journal.vmid), at_b.guest("qemu", minute.vmid)
        assert entry_j is not None and entry_j.mode == "journal", entry_j
        assert entry_m is not None and (entry_m.mode, entry_m.schedule) == ("snapshot", "1m")
        assert _mode(b, journal.image) == "journal"
        assert _schedules(b, minute.image) == ["1m"]

        sync(sites, b)
        back = sites.cli(a, "failback", "vm", str(journal.vmid), str(minute.vmid))
        if back.rc != 0:
            # Measured on Ceph 16.2 (not always): after a clean planned failover the
            # journal-mode copy at the returning site may report split-brain. The
            # failback refuses to resync without --yes and the guest named; given them,
            # it resyncs (the discarded copy kept in the trash) and finishes.
            assert f"vm:{journal.vmid}: FAILED" in back.out, back.out + back.err
            assert "split-brain" in back.out and f"vm:{minute.vmid}: OK" in back.out
            back = sites.cli(a, "failback", "--yes", "vm", str(journal.vmid))
            assert back.rc == 0, back.out + back.err
            assert "rbd trash restore" in back.out + back.err
        at_a = load_site_config(a.root)
        entry_j, entry_m = at_a.guest("qemu", journal.vmid), at_a.guest("qemu", minute.vmid)
        assert entry_j is not None and entry_j.mode == "journal", entry_j
        assert entry_m is not None and (entry_m.mode, entry_m.schedule) == ("snapshot", "1m")
        assert _mode(a, journal.image) == "journal"
        assert _schedules(a, minute.image) == ["1m"]
        assert rbdtools.is_primary(a.ceph, minute.image)
    finally:
        stop_everywhere(sites, [journal, minute])


def test_an_unrelated_guest_with_the_vmid_is_never_moved(sites: Sites) -> None:
    """Staged CT N must not move the target's own VM N (on local storage) aside; the
    refusal comes in preflight, so the CT keeps running at the source."""
    a, b = sites.a, sites.b
    ct = create(a, "lxc", next_vmid(), [KRBD_STORAGE])
    node = b.nodes[1]
    theirs = b.root / "nodes" / node / "qemu-server" / f"{ct.vmid}.conf"
    text = f"memory: 512\nname: theirs\nscsi0: local:{ct.vmid}/vm-{ct.vmid}-disk-0.raw,size=1G\n"
    try:
        enable(sites, a, [ct])
        start(a, ct)
        wait_beats(a, ct, 2)
        sync(sites, a)
        theirs.write_text(text)
        starts, before = start_requests(b, ct), open_journals(b)
        stale = b.root / "pve-mirror" / "stale"
        aside_before = set(os.listdir(stale)) if stale.is_dir() else set()

        for args in (("--dry-run",), ()):
            refused = sites.cli(b, "failover", *args, "ct", str(ct.vmid))
            assert refused.rc == 4, refused.out + refused.err
            assert "preflight refused" in refused.err, refused.err
            assert f"unrelated VM ({theirs})" in refused.err, refused.err
            assert "nothing was changed" in refused.err

        assert theirs.read_text() == text, "the unrelated VM's config was touched"
        assert (set(os.listdir(stale)) if stale.is_dir() else set()) == aside_before
        assert not open_journals(b) - before, "a refused failover must not start"
        # production as it was: the CT still runs at site-a on its primary image
        assert running(a, ct) and rbdtools.is_primary(a.ceph, ct.image)
        assert not rbdtools.is_primary(b.ceph, ct.image)
        assert start_requests(b, ct) == starts
    finally:
        theirs.unlink(missing_ok=True)
        stop_everywhere(sites, [ct])
