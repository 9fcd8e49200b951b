"""Issue 11, items 2 and 6 on the real two-site lab: the forced-failover guard fails
closed, and fencing (the hook with a peer that cannot be asked, peer-lost, unfence).

Only a timeout, a refused connection or no route counts as "the peer is down": a live
peer behind a certificate this site does not trust, or a peer whose keyring is
missing here, makes ``failover --force`` refuse naming the cause; a stopped peer lets
it plan. The hook refuses to start a guest whose disks are primary here while the
peer cannot be asked, unless this site holds a valid fence note against the peer or
its admin declared the peer lost (``site peer-lost``); ``site unfence`` removes both
once the peer answers and no fenced image is primary at both sites.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

from pve_mirror.actions import fence
from tests.integration.dr_helpers import (
    Guest,
    api_start,
    create,
    enable,
    running,
    start,
    stop,
    stop_everywhere,
    sync,
)
from tests.integration.sites import Sites, next_vmid
from tests.lab import rbdtools
from tests.lab.pve_site import RBD_STORAGE, PveSite
from tests.lab.wait import wait_until


@contextlib.contextmanager
def swapped(path: Path, data: bytes | None) -> Iterator[None]:
    """Give ``path`` the content ``data`` (None: remove it) for the block, then restore it."""
    saved = path.read_bytes()
    try:
        if data is None:
            path.unlink()
        else:
            path.write_bytes(data)
        yield
    finally:
        path.write_bytes(saved)


def staged_on_b(sites: Sites) -> Guest:
    """A VM on site-a, enabled and synced to site-b (what a failover to site-b takes)."""
    vm = create(sites.a, "qemu", next_vmid(), [RBD_STORAGE])
    enable(sites, sites.a, [vm])
    sync(sites, sites.a)
    return vm


def priv(site: PveSite, name: str) -> Path:
    return site.root / "priv" / "pve-mirror" / name


def test_a_live_peer_on_an_untrusted_certificate_is_not_down(sites: Sites) -> None:
    a, b = sites.a, sites.b
    vm = staged_on_b(sites)
    # site-b's own certificate as the CA of site-a's API: site-a answers, TLS fails;
    # site-a's Ceph as if cut off (its monitors on a port where nothing listens)
    conf = priv(b, "site-a.conf")
    cut_off = re.sub(rb"(?m)^(\s*mon[ _]host\s*=).*$", rb"\1 127.0.0.1:9", conf.read_bytes())
    assert cut_off != conf.read_bytes()
    with swapped(priv(b, "site-a.ca.pem"), b.ca_cert.read_bytes()), swapped(conf, cut_off):
        forced = sites.cli(b, "failover", "--force", "--dry-run", "vm", str(vm.vmid))
        with swapped(priv(b, "site-a.ca.pem"), None):
            cut = sites.cli(b, "failover", "--force", "--dry-run", "vm", str(vm.vmid))
        # the admin who fenced site-a another way may say so
        told = sites.cli(b, "failover", "--force", "--yes-i-know", "--dry-run", "vm", str(vm.vmid))
        assert told.rc == 0 and "forced failover" in told.out, told.out + told.err
    assert forced.rc == 4, forced.out + forced.err
    assert "cannot tell that site-a is down" in forced.err, forced.err
    assert "TLS verification" in forced.err, forced.err
    assert len(forced.err.strip().splitlines()) == 1, forced.err
    assert a.running()
    # the same, with no CA file: the system's CAs do not know it either
    assert cut.rc == 4 and "TLS verification" in cut.err, cut.out + cut.err


def test_a_peer_whose_keyring_is_missing_here_is_not_down(sites: Sites) -> None:
    vm = staged_on_b(sites)
    b = sites.b
    with swapped(priv(b, "site-a.keyring"), None):
        forced = sites.cli(b, "failover", "--force", "--dry-run", "vm", str(vm.vmid))
        assert forced.rc == 4, forced.out + forced.err
        # the API still answers here: the refusal names it; with --yes-i-know the
        # remaining doubt is the Ceph one alone, and it is overridden
        assert "site-a still answers (API)" in forced.err, forced.err
        planned = sites.cli(b, "failover", "--dry-run", "vm", str(vm.vmid))
        assert planned.rc == 4 and "cannot ask site-a (Ceph:" in planned.err, planned.err
        assert "use --force" not in planned.err, planned.err
        with swapped(priv(b, "site-a.token"), None):
            both = sites.cli(b, "failover", "--force", "--dry-run", "vm", str(vm.vmid))
    assert both.rc == 4, both.out + both.err
    assert "cannot tell that site-a is down" in both.err, both.err
    assert "Ceph:" in both.err and "RADOS object not found" in both.err, both.err
    assert "API:" in both.err and "token secret" in both.err, both.err


def write_reversed_note(site: PveSite, peer: str) -> Path:
    """A fence note as the peer would write it (fenced: this site, by: the peer)."""
    path = fence.note_path(site.root, peer)
    note = {"fenced": site.name, "by": peer, "at": time.time(), "guests": []}
    path.write_text(json.dumps(note))
    return path


def test_a_site_whose_peer_cannot_be_asked_starts_nothing_until_declared_lost(
    sites: Sites,
) -> None:
    a, b = sites.a, sites.b
    staged = staged_on_b(sites)
    own = create(b, "qemu", next_vmid(), [RBD_STORAGE])
    enable(sites, b, [own])
    wait_until(lambda: rbdtools.image_exists(a.ceph, own.image), timeout=120, what="copy on site-a")
    lost = fence.lost_path(b.root, "site-a")
    reversed_note = write_reversed_note(b, "site-a")
    try:
        sites.lab.stop_site("site-a")
        try:
            # a stopped peer is down: the forced failover is planned
            forced = sites.cli(b, "failover", "--force", "--dry-run", "vm", str(staged.vmid))
            assert forced.rc == 0, forced.out + forced.err
            assert "forced failover" in forced.out, forced.out

            exitstatus, log = api_start(b, own)
            assert exitstatus != "OK", f"started {own.label} with site-a unasked:\n{log}"
            assert "refusing to start" in log and "cannot be asked" in log, log
            assert "site peer-lost" in log, log
            assert "ignoring the fence note" in log, log  # the reversed note is not trusted
            assert not running(b, own)

            unsure = sites.cli(b, "site", "peer-lost")
            assert unsure.rc == 4 and "--yes" in unsure.err, unsure.out + unsure.err
            assert not lost.exists()
            dry = sites.cli(b, "site", "peer-lost", "--dry-run")
            assert dry.rc == 0 and "Would declare" in dry.out, dry.out + dry.err
            assert not lost.exists()
            declared = sites.cli(b, "site", "peer-lost", "--yes")
            assert declared.rc == 0, declared.out + declared.err
            note = json.loads(lost.read_text())
            assert note["lost"] == "site-a" and note["by"] == "site-b" and note["at"] > 0

            exitstatus, log = api_start(b, own)
            assert exitstatus == "OK", log
            assert "declared lost at" in log, log
            assert running(b, own)
            stop(b, own)
            # a stale declaration must not outlive the peer's return
            assert sites.cli(b, "site", "unfence", "--dry-run").rc == 4
        finally:
            sites.lab.start_site("site-a")
            a.start()
        refused = sites.cli(b, "site", "peer-lost", "--yes", "--dry-run")
        assert refused.rc == 4 and "answers" in refused.err, refused.out + refused.err

        # the peer answers: the hook asks it and drops the declaration
        start(b, own)
        assert not lost.exists(), "the peer-lost note outlived the peer's return"
        stop(b, own)

        undone = sites.cli(b, "site", "unfence")
        assert undone.rc == 0, undone.out + undone.err
        assert "Removed" in undone.out and str(reversed_note) in undone.out, undone.out
        assert not reversed_note.exists()
    finally:
        reversed_note.unlink(missing_ok=True)
        lost.unlink(missing_ok=True)
        stop_everywhere(sites, [staged, own])


def test_unfence_needs_the_peer_demoted(sites: Sites) -> None:
    a, b = sites.a, sites.b
    own = create(b, "qemu", next_vmid(), [RBD_STORAGE])
    enable(sites, b, [own])
    rbdtools.wait_replicated(b.ceph, a.ceph, own.image, 120)
    note = fence.write_note(b.root, "site-a", "site-b", [f"VM {own.vmid}"])
    try:
        shown = sites.cli(b, "status", "vm", str(own.vmid))
        assert "site-a is fenced by site-b since" in shown.err, shown.out + shown.err
        # only site-b's copy is primary: the fence may go
        dry = sites.cli(b, "site", "unfence", "--dry-run")
        assert dry.rc == 0, dry.out + dry.err
        assert "Would remove" in dry.out and note.exists(), dry.out

        rbdtools.promote(a.ceph, own.image, force=True)  # as a forced failover at site-a
        refused = sites.cli(b, "site", "unfence")
        assert refused.rc == 4, refused.out + refused.err
        assert f"VM {own.vmid}" in refused.err and "primary at both sites" in refused.err
        assert "--risk-two-primaries" in refused.err
        assert note.exists()

        # the fence note against site-a is valid: the hook does not wait for site-a
        start(b, own)
        stop(b, own)

        risked = sites.cli(b, "site", "unfence", "--risk-two-primaries")
        assert risked.rc == 0, risked.out + risked.err
        assert not note.exists()
        # now the hook asks site-a, which holds a primary copy too
        exitstatus, log = api_start(b, own)
        assert exitstatus != "OK" and "primary at site-a too" in log, log
    finally:
        note.unlink(missing_ok=True)
        stop_everywhere(sites, [own])
        with contextlib.suppress(Exception):
            rbdtools.demote(a.ceph, own.image)
            with rbdtools.open_image(a.ceph, own.image) as image:
                image.mirror_image_resync()
