"""Issue 10 on the lab: pve-mirror against PVE's API semantics as Proxmox has them.

The simulator behaves as Proxmox VE does where it is less forgiving than a naive
reading of the API: HA-managed guests start and stop asynchronously through the HA
stack, API tokens with privilege separation see nothing without ACLs, a start may
end ``WARNINGS: N``, /cluster/resources is pvestatd's stale view (``paused`` VMs),
a VM's post-stop hook runs after its stop task, synced configs carry ``lock:``, and
pvesh runs tasks in the foreground and exits 0 when they fail (tests/lab/pvesim/*,
tests/lab/pvesh.py). Each test takes fresh VMIDs.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from tests.integration.dr_helpers import (
    Guest,
    create,
    current,
    enable,
    mirror_paused,
    running,
    runs,
    start,
    stop_everywhere,
    sync,
    task_log,
    wait_beats,
    wait_task,
)
from tests.integration.sites import Sites, next_vmid
from tests.lab import pveadmin, rbdtools
from tests.lab.pve_site import RBD_STORAGE, PveSite
from tests.lab.wait import wait_until


@contextlib.contextmanager
def cleanup(sites: Sites, *guests: Guest) -> Iterator[None]:
    """Afterwards: no HA resource left for the guests, the guests stopped on both sites."""
    try:
        yield
    finally:
        for site in (sites.a, sites.b):
            for guest in guests:
                pveadmin.ha_remove(site.root, guest.kind, guest.vmid)
        stop_everywhere(sites, guests)


def crashes(site: PveSite, guest: Guest) -> int:
    """Give how often the guest stopped by itself on ``site`` (a write failed under it,
    e.g. its image was demoted while it ran)."""
    word = "VM" if guest.kind == "qemu" else "CT"
    log = (site.scratch / "pvesim.log").read_text(errors="replace")
    return log.count(f"{word} {guest.vmid} stopped by itself")


class Watch:
    """Samples, while a failover runs, whether the guest runs on a site whose copy of its
    image is not primary: that would be a demotion under a running guest."""

    def __init__(self, site: PveSite, guest: Guest) -> None:
        self.site, self.guest = site, guest
        self.violations: list[str] = []
        self.samples = 0
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._halt.wait(0.05):
            try:
                status = current(self.site, self.guest)
                primary = rbdtools.is_primary(self.site.ceph, self.guest.image)
            except Exception:  # noqa: BLE001 - a sample that fails is no sample
                continue
            self.samples += 1
            if status.get("status") == "running" and not primary:
                self.violations.append(f"{status.get('qmpstatus')} while not primary")

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join(10)


def ha_state(site: PveSite, guest: Guest) -> str | None:
    """Give the requested state of the guest's HA resource on ``site``."""
    sid = ("vm" if guest.kind == "qemu" else "ct", guest.vmid)
    found = [s for s in pveadmin.ha_resources(site.root) if (s.type, s.vmid) == sid]
    return found[0].get("state", "started") if found else None


def assert_records_kept(site: PveSite, guest: Guest, boot: int, seqs: set[int]) -> None:
    """Every record of run ``boot`` is on ``site``'s copy."""
    lost = seqs - runs(site, guest).get(boot, set())
    assert not lost, f"{guest.label}: records {sorted(lost)} of run {boot} lost on {site.name}"


# -- 1. HA-managed guests -----------------------------------------------------------------


def test_ha_managed_guest_fails_over_and_back_through_ha(sites: Sites) -> None:
    a, b = sites.a, sites.b
    vm = create(a, "qemu", next_vmid(), [RBD_STORAGE])
    with cleanup(sites, vm):
        enable(sites, a, [vm])
        pveadmin.ha_set(b.root, vm.kind, vm.vmid, "stopped")  # the admin's standby entry
        pveadmin.ha_set(a.root, vm.kind, vm.vmid, "started")  # HA starts it on site-a
        boot_a = wait_beats(a, vm, 3)
        assert current(a, vm)["ha"] == {"managed": 1, "state": "started"}
        sync(sites, a)

        with mirror_paused(sites, a), Watch(a, vm) as watch:
            moved = sites.cli(b, "failover", "--planned", "vm", str(vm.vmid))
            assert moved.rc == 0, moved.out + moved.err
        assert watch.samples > 10 and not watch.violations, watch.violations
        assert crashes(a, vm) == 0, "the guest crashed on site-a: its image was demoted under it"
        assert "stopped by HA on" in moved.err and "running (started by HA)" in moved.err
        # the site the guest left keeps its resource, ignored (issue 14)
        assert ha_state(a, vm) == "ignored" and ha_state(b, vm) == "started"
        seqs_a = runs(a, vm)[boot_a]
        assert len(seqs_a) >= 3 and seqs_a == set(range(len(seqs_a)))
        assert_records_kept(b, vm, boot_a, seqs_a)
        assert running(b, vm) and not running(a, vm)
        boot_b = wait_beats(b, vm, 3, exclude={boot_a})

        sync(sites, b)
        with mirror_paused(sites, b), Watch(b, vm) as watch:
            home = sites.cli(a, "failback", "vm", str(vm.vmid))
            assert home.rc == 0, home.out + home.err
        assert not watch.violations, watch.violations
        assert crashes(b, vm) == 0
        assert ha_state(b, vm) == "ignored" and ha_state(a, vm) == "started"
        assert running(a, vm) and not running(b, vm)
        assert_records_kept(a, vm, boot_b, runs(b, vm)[boot_b])
        wait_beats(a, vm, 2, exclude={boot_a, boot_b})


# -- 2. API tokens with privilege separation ----------------------------------------------


def test_a_privsep_token_without_acls_is_refused_by_site_init(sites: Sites, tmp_path: Path) -> None:
    a, b = sites.a, sites.b
    name = "mirror-sep"
    token = f"root@pam!{name}"
    secret_file = tmp_path / "sep.token"
    secret_file.write_text(f"{token}={pveadmin.add_token(b.root, 'root@pam', name)}\n")
    args = ["site", "init", "--peer-api-token", token, "--peer-api-secret-file", str(secret_file)]
    config = a.root / "pve-mirror.cfg"
    before = config.read_bytes()
    try:
        refused = sites.cli(a, *args)
        assert refused.rc == 1, refused.out + refused.err
        text = refused.out + refused.err
        for lacking in ("VM.Audit on /vms", "VM.PowerMgmt on /vms", "Sys.Audit on /nodes"):
            assert lacking in text, text
        assert f"site-b's API token {token} lacks" in text
        assert config.read_bytes() == before, "a refused site init must change nothing"

        pveadmin.set_acl(b.root, "/vms", token, "PVEVMUser")
        partly = sites.cli(a, *args)
        assert partly.rc == 1 and "Sys.Audit on /nodes" in partly.out + partly.err
        assert "VM.PowerMgmt on /vms" not in partly.out + partly.err

        pveadmin.set_acl(b.root, "/nodes", token, "PVEAuditor")
        accepted = sites.cli(a, *args)
        assert accepted.rc == 0, accepted.out + accepted.err
        status = sites.cli(a, "site", "status", "--output-format", "json")
        peer_api = next(x for x in status.json()["apis"] if x["side"] == "peer")
        assert (peer_api["token"], peer_api["problems"]) == (token, [])

        pveadmin.set_acl(b.root, "/nodes", token, "NoAccess")
        status = sites.cli(a, "site", "status", "--output-format", "json")
        assert status.rc == 2
        peer_api = next(x for x in status.json()["apis"] if x["side"] == "peer")
        assert any("Sys.Audit on /nodes" in p for p in peer_api["problems"]), peer_api

        # a wrong secret: the API refuses the token (401), site init names it
        secret_file.write_text(f"{token}={'0' * 8}-0000-0000-0000-{'0' * 12}\n")
        wrong = sites.cli(a, *args)
        assert wrong.rc == 1 and "401" in wrong.out + wrong.err, wrong.out + wrong.err
    finally:
        pveadmin.remove_token(b.root, token)
        assert sites.init(a).rc == 0


def test_a_refused_peer_token_is_never_taken_for_a_site_that_is_down(
    sites: Sites, tmp_path: Path
) -> None:
    a, b = sites.a, sites.b
    vm = create(a, "qemu", next_vmid(), [RBD_STORAGE])
    enable(sites, a, [vm])
    sync(sites, a)
    secret = b.root / "priv" / "pve-mirror" / "site-a.token"
    saved = secret.read_bytes()
    try:
        secret.write_text(f"{a.token}={'1' * 8}-1111-1111-1111-{'1' * 12}\n")
        forced = sites.cli(b, "failover", "--force", "vm", str(vm.vmid), "--dry-run")
        assert forced.rc == 6, forced.out + forced.err
        assert "401" in forced.err and "so site-a is up" in forced.err
        planned = sites.cli(b, "failover", "vm", str(vm.vmid), "--dry-run")
        assert planned.rc == 6 and "does not answer" not in planned.err
    finally:
        secret.write_bytes(saved)


# -- 3. a start that ends with warnings ---------------------------------------------------


def test_a_start_ending_in_warnings_counts_as_started(sites: Sites) -> None:
    a, b = sites.a, sites.b
    vmids = [next_vmid(), next_vmid()]
    # qemu-server warns about an iothread without the virtio-scsi-single controller
    warned = Guest("qemu", vmids[0])
    a.create_guest("qemu", warned.vmid, [(RBD_STORAGE, 16)], node=a.spread_node(warned.vmid),
                   hookscript="local:snippets/pve-mirror-hook",
                   extra={"scsihw": "virtio-scsi-pci", "startup": "order=1"})  # fmt: skip
    later = Guest("qemu", vmids[1])
    a.create_guest("qemu", later.vmid, [(RBD_STORAGE, 16)], node=a.spread_node(later.vmid),
                   hookscript="local:snippets/pve-mirror-hook",
                   extra={"startup": "order=2"})  # fmt: skip
    with cleanup(sites, warned, later):
        enable(sites, a, [warned, later])
        sync(sites, a)
        moved = sites.cli(b, "failover", "vm", str(warned.vmid), str(later.vmid))
        assert moved.rc == 0, moved.out + moved.err
        assert "task ended with WARNINGS: 1: iothread is only valid" in moved.err
        assert running(b, warned) and running(b, later)


# -- 4. a paused VM on the returning site -------------------------------------------------


def test_a_paused_vm_is_stopped_before_its_images_are_demoted(sites: Sites) -> None:
    a, b = sites.a, sites.b
    vm = create(a, "qemu", next_vmid(), [RBD_STORAGE])
    with cleanup(sites, vm):
        enable(sites, a, [vm])
        start(a, vm)
        wait_beats(a, vm, 2)
        sync(sites, a)
        # a forced promote needs a complete copy: wait for the first sync (a busy
        # machine may not have finished it yet)
        rbdtools.wait_replicated(a.ceph, b.ceph, vm.image)
        # site-a is cut off but its guest runs on: a forced failover to site-b
        forced = sites.cli(b, "failover", "--force", "--yes-i-know", "vm", str(vm.vmid))
        assert forced.rc == 0, forced.out + forced.err
        assert running(b, vm) and running(a, vm)
        # ... and QEMU on site-a pauses it (as on an I/O error); pvestatd shows "paused"
        node = a.guest_node(vm.kind, vm.vmid)
        upid = a.api().nodes(node).qemu(vm.vmid).status.suspend.post()
        wait_until(lambda: current(a, vm)["qmpstatus"] == "paused", timeout=30)

        def listed_paused() -> bool:
            listed = a.api().cluster.resources.get(type="vm")
            return any(r["vmid"] == vm.vmid and r["status"] == "paused" for r in listed)

        wait_until(listed_paused, timeout=30, what="pvestatd to show it paused")
        assert upid
        sync(sites, b)
        with Watch(a, vm) as watch:
            home = sites.cli(a, "failback", "--yes", "vm", str(vm.vmid))
            assert home.rc == 0, home.out + home.err
        assert not watch.violations, watch.violations
        assert re.search(r"stopped on pve-a\d \(was running \(paused\)\)", home.err), home.err
        assert crashes(a, vm) == 0
        assert running(a, vm) and not running(b, vm)


# -- 5. qmeventd's post-stop --------------------------------------------------------------


def test_a_vm_post_stop_runs_after_its_stop_task(sites: Sites, tmp_path: Path) -> None:
    a = sites.a
    vmid = next_vmid()
    trace = tmp_path / "trace"
    hook = a.write_hookscript(
        f"trace-{vmid}.sh", f'#!/bin/sh\necho "hook $1 $2"\necho "$1 $2" >> {trace}\n'
    )
    a.create_guest("qemu", vmid, [(RBD_STORAGE, 16)], hookscript=hook)
    vm = Guest("qemu", vmid)
    with cleanup(sites, vm):
        start(a, vm)
        api = a.api().nodes(a.node)
        upid = str(api.qemu(vmid).status.stop.post())
        status = wait_task(a, upid)
        assert status["exitstatus"] == "OK"
        # a hook's output goes to the task it runs in: pre-stop did, post-stop did not
        log = task_log(a, upid)
        assert f"hook {vmid} pre-stop" in log and "post-stop" not in log, log
        wait_until(lambda: f"{vmid} post-stop" in trace.read_text(), timeout=30, what="post-stop")
        assert trace.read_text().splitlines() == [
            f"{vmid} pre-start", f"{vmid} post-start", f"{vmid} pre-stop", f"{vmid} post-stop",
        ]  # fmt: skip


# -- 6. config locks ----------------------------------------------------------------------


@contextlib.contextmanager
def unlocked_after(conf: Path) -> Iterator[None]:
    """Drop the ``lock:`` line of a config after the block (the next sync sends it so)."""
    try:
        yield
    finally:
        text = conf.read_text()
        conf.write_text("".join(ln for ln in text.splitlines(True) if not ln.startswith("lock:")))


def test_a_config_synced_during_a_backup_fails_over_by_the_lock_policy(sites: Sites) -> None:
    a, b = sites.a, sites.b
    vm = create(a, "qemu", next_vmid(), [RBD_STORAGE])
    snap = create(a, "qemu", next_vmid(), [RBD_STORAGE])
    snap_conf = a.guest_config_path(snap.kind, snap.vmid, a.guest_node(snap.kind, snap.vmid))
    with cleanup(sites, vm, snap), unlocked_after(snap_conf):
        enable(sites, a, [vm, snap])
        start(a, vm)
        boot_a = wait_beats(a, vm, 2)
        for guest, lock in ((vm, "backup"), (snap, "snapshot")):
            conf = a.guest_config_path(guest.kind, guest.vmid, a.guest_node(guest.kind, guest.vmid))
            conf.write_text(conf.read_text() + f"lock: {lock}\n")  # as vzdump / qm snapshot do
        sync(sites, a)

        busy = sites.cli(b, "failover", "vm", str(vm.vmid))
        assert busy.rc == 4, busy.out + busy.err
        assert f"VM {vm.vmid} is locked (backup) on site-a" in busy.err
        other = sites.cli(b, "failover", "--force", "--yes-i-know", "vm", str(snap.vmid))
        assert other.rc == 4 and f"VM {snap.vmid}: its config staged by site-a is locked" \
            " (snapshot)" in other.err, other.err  # fmt: skip

        conf = a.guest_config_path(vm.kind, vm.vmid, a.guest_node(vm.kind, vm.vmid))
        conf.write_text(conf.read_text().replace("lock: backup\n", ""))  # the backup ended
        with mirror_paused(sites, a):
            moved = sites.cli(b, "failover", "vm", str(vm.vmid))
            assert moved.rc == 0, moved.out + moved.err
            assert "synced during a backup on site-a (lock: backup)" in moved.err
            assert running(b, vm)
            installed = b.guest_config_path(vm.kind, vm.vmid, b.guest_node(vm.kind, vm.vmid))
            assert "lock:" not in installed.read_text()
            assert_records_kept(b, vm, boot_a, runs(a, vm)[boot_a])


# -- 7. the pvesh path --------------------------------------------------------------------


@contextlib.contextmanager
def local_api_by_pvesh(site: PveSite) -> Iterator[None]:
    """Drop api-url/api-token from the site section: the local API is pvesh."""
    config = site.root / "pve-mirror.cfg"
    saved = config.read_text()
    lines, in_site = [], False
    for line in saved.splitlines(keepends=True):
        if line.strip() and not line[0].isspace():
            in_site = line.startswith("site:")
        if in_site and line.split()[:1] in (["api-url"], ["api-token"]):
            continue
        lines.append(line)
    config.write_text("".join(lines))
    try:
        yield
    finally:
        config.write_text(saved)


@contextlib.contextmanager
def removed_after(path: Path) -> Iterator[None]:
    """Remove ``path`` after the block."""
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def test_a_planned_failover_through_pvesh(sites: Sites) -> None:
    a, b = sites.a, sites.b
    vm = create(a, "qemu", next_vmid(), [RBD_STORAGE])
    broken = create(a, "qemu", next_vmid(), [RBD_STORAGE])
    # on site-b a hookscript chained before pve-mirror's refuses to start it
    refuse = b.write_hookscript(
        f"refuse-{broken.vmid}.sh", '#!/bin/sh\n[ "$2" = pre-start ] && exit 1\nexit 0\n'
    )
    chain = b.root / "pve-mirror" / "hooks" / f"{broken.vmid}.chain"
    chain.parent.mkdir(parents=True, exist_ok=True)
    chain.write_text(refuse + "\n")
    with cleanup(sites, vm, broken), local_api_by_pvesh(b), removed_after(chain):
        enable(sites, a, [vm, broken])
        start(a, vm)
        boot_a = wait_beats(a, vm, 2)
        sync(sites, a)
        rbdtools.wait_replicated(a.ceph, b.ceph, broken.image, timeout=90)
        with mirror_paused(sites, a):
            moved = sites.cli(b, "failover", "vm", str(vm.vmid))
            assert moved.rc == 0, moved.out + moved.err
            assert running(b, vm)
            assert_records_kept(b, vm, boot_a, runs(a, vm)[boot_a])
        log = (b.scratch / "pvesim.log").read_text(errors="replace")
        assert re.search(rf"start VM {vm.vmid}: task UPID:[^ ]+:qmstart:{vm.vmid}:root@pam:", log)

        # pvesh exits 0 when the task fails: pve-mirror reads the task's status
        failed = sites.cli(b, "failover", "vm", str(broken.vmid))
        assert failed.rc == 1, failed.out + failed.err
        assert f"hookscript error for {broken.vmid} on pre-start" in failed.out + failed.err
        assert not running(b, broken)
