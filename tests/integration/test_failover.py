"""Issue 5 on the real two-site lab: planned and forced failover, failback with
split-brain, crash recovery from the journal, the cluster lock, hostile staging.

Guests are created on site-a with the pve-mirror hookscript, enabled with the CLI and
started through site-a's API simulator, so they write heartbeat records (one per
second, numbered per run) into their first disk. A failover loses no data when every
record site-a's run wrote before the stop is on site-b's copy afterwards; the run on
site-b is proven by records of a new boot id. Each test takes fresh VMIDs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from pve_mirror.engine.lock import cluster_lock
from tests.integration.dr_helpers import (
    PYTHON,
    REPO,
    Guest,
    api_start,
    cli_env,
    create,
    done_steps,
    enable,
    mirror_paused,
    open_journals,
    popen_cli,
    run_cli,
    running,
    runs,
    start,
    start_requests,
    stop_everywhere,
    sync,
    wait_beats,
)
from tests.integration.sites import Sites, next_vmid
from tests.lab import rbdtools
from tests.lab.pve_site import KRBD_STORAGE, RBD_STORAGE, PveSite
from tests.lab.wait import wait_until


@contextlib.contextmanager
def cleanup(sites: Sites, *guests: Guest) -> Iterator[None]:
    """Stop the guests on both sites afterwards, so the shared lab stays light."""
    try:
        yield
    finally:
        stop_everywhere(sites, guests)


def started_on_a(sites: Sites, guests: list[Guest], beats: int = 3) -> dict[Guest, int]:
    """Enable and start ``guests`` on site-a, wait for ``beats`` heartbeats, sync to site-b.

    Gives each guest's boot id of its run on site-a.
    """
    a = sites.a
    enable(sites, a, guests)
    for guest in guests:
        start(a, guest)
    boots = {guest: wait_beats(a, guest, beats) for guest in guests}
    sync(sites, a)
    return boots


def assert_moved(sites: Sites, guest: Guest, boot_a: int, seqs_a: set[int]) -> None:
    """The guest runs on site-b only, with site-a's records intact and new ones advancing."""
    a, b = sites.a, sites.b
    assert running(b, guest), f"{guest.label} does not run on site-b"
    assert not running(a, guest), f"{guest.label} still runs on site-a"
    on_b = runs(b, guest)
    missing = seqs_a - on_b.get(boot_a, set())
    assert not missing, f"{guest.label}: records {sorted(missing)} of site-a's run lost"
    boot_b = wait_beats(b, guest, 3, exclude={boot_a})
    assert boot_b != boot_a


def test_planned_failover_of_librbd_krbd_vms_and_a_container(sites: Sites) -> None:
    a, b = sites.a, sites.b
    vm = create(a, "qemu", next_vmid(), [RBD_STORAGE])
    kvm = create(a, "qemu", next_vmid(), [KRBD_STORAGE])
    ct = create(a, "lxc", next_vmid(), [KRBD_STORAGE])
    guests = [vm, kvm, ct]
    with cleanup(sites, *guests):
        boots = started_on_a(sites, guests)

        # site-a's images keep the state of the stop as long as nothing replicates to them
        with mirror_paused(sites, a):
            vms = sites.cli(b, "failover", "--planned", "vm", str(vm.vmid), str(kvm.vmid))
            assert vms.rc == 0, vms.out + vms.err
            cts = sites.cli(b, "failover", "ct", str(ct.vmid))
            assert cts.rc == 0, cts.out + cts.err
            for guest in guests:
                seqs_a = runs(a, guest)[boots[guest]]
                assert len(seqs_a) >= 3 and seqs_a == set(range(len(seqs_a))), seqs_a
                assert_moved(sites, guest, boots[guest], seqs_a)
                for image in guest.images:
                    assert rbdtools.is_primary(b.ceph, image)
                    assert not rbdtools.is_primary(a.ceph, image)
        for guest in guests:
            for image in guest.images:
                # replication runs back: site-a copies site-b's newest mirror snapshot
                rbdtools.wait_replicated(b.ceph, a.ceph, image, timeout=90)
        # the hook keeps the demoted site from starting a guest
        exitstatus, log = api_start(a, vm)
        assert exitstatus != "OK" and "not primary" in log, (exitstatus, log)


def test_forced_failover_then_failback_through_split_brain(sites: Sites) -> None:
    a, b = sites.a, sites.b
    vm = create(a, "qemu", next_vmid(), [RBD_STORAGE])
    with cleanup(sites, vm):
        boot_a = started_on_a(sites, [vm])[vm]

        before = open_journals(b)
        refused = sites.cli(b, "failover", "--force", "vm", str(vm.vmid))
        assert refused.rc == 4, refused.out + refused.err
        assert "site-a still answers (API, Ceph)" in refused.err
        assert "--yes-i-know" in refused.err
        assert not open_journals(b) - before, "a refused failover must not start"
        assert rbdtools.is_primary(a.ceph, vm.image) and running(a, vm)

        sites.lab.stop_site("site-a")
        try:
            assert not a.running(), "stop_site should take site-a's simulator down too"
            forced = sites.cli(b, "failover", "--force", "vm", str(vm.vmid))
            assert forced.rc == 0, forced.out + forced.err
            assert rbdtools.is_primary(b.ceph, vm.image)
            assert (b.root / "pve-mirror" / "fence-site-a.json").is_file()
            assert running(b, vm)
            boot_b = wait_beats(b, vm, 3, exclude={boot_a})
        finally:
            sites.lab.start_site("site-a")
            a.start()
        assert sites.init(a).rc == 0

        # site-a is back and still thinks it is primary: its guest must not start
        assert rbdtools.is_primary(a.ceph, vm.image), "site-a's image should still be primary"
        assert not running(a, vm)
        exitstatus, log = api_start(a, vm)
        assert exitstatus != "OK", f"site-a started {vm.label} beside site-b's run:\n{log}"
        assert "refusing to start" in log and "primary at site-b too" in log, log
        assert not running(a, vm)
        # a real split-brain: site-a's copy changed after the split
        rbdtools.write(a.ceph, vm.image, 8 << 20, os.urandom(4096))
        rbdtools.create_mirror_snapshot(a.ceph, vm.image)

        sync(sites, b)
        unsure = sites.cli(a, "failback", "vm", str(vm.vmid))
        assert unsure.rc == 1, unsure.out + unsure.err
        assert "SPLIT-BRAIN" in unsure.err
        assert "rerun with --yes" in unsure.out, unsure.out
        assert not running(a, vm) and running(b, vm)

        with mirror_paused(sites, b):  # site-b's copy keeps the state of the stop
            home = sites.cli(a, "failback", "--yes", "vm", str(vm.vmid))
            assert home.rc == 0, home.out + home.err
            assert "flagged for resync" in home.err and "replicated" in home.err
            assert running(a, vm) and not running(b, vm)
            seqs_b = runs(b, vm)[boot_b]
            assert len(seqs_b) >= 3 and seqs_b == set(range(len(seqs_b))), seqs_b
            lost = seqs_b - runs(a, vm).get(boot_b, set())
            assert not lost, f"site-b's records {sorted(lost)} were lost in the failback"
        wait_beats(a, vm, 2, exclude={boot_a, boot_b})
        assert rbdtools.is_primary(a.ceph, vm.image)
        assert not rbdtools.is_primary(b.ceph, vm.image)


# Runs the CLI and SIGKILLs its own process at the k-th journalled "done" of a step:
# "after" once the line is on disk, "before" when the step has done its work but the
# line is not written yet (the rerun must then redo that step: it must be idempotent).
CRASH_DRIVER = """
import os, signal, sys, threading
from pve_mirror.engine import journal
from pve_mirror.cli.main import main

when, k = os.environ["CRASH_AT"].split(":")
record, count, lock = journal.Journal.record, [0], threading.Lock()

def record_or_die(self, step_id, event, detail=""):
    with lock:
        if event == "done":
            count[0] += 1
        if event == "done" and count[0] == int(k) and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        record(self, step_id, event, detail)
        if event == "done" and count[0] == int(k) and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

journal.Journal.record = record_or_die
sys.exit(main(sys.argv[1:]))
"""


def crash_failover(site: PveSite, guest: Guest, when: str, k: int) -> tuple[Path, list[str]]:
    """Run ``failover vm N`` as a process killed (SIGKILL) at the k-th step; give its
    journal and the step ids it records as done."""
    before = open_journals(site)
    argv = [PYTHON, "-c", CRASH_DRIVER, "--root", str(site.root), "failover", "vm", str(guest.vmid)]
    done = subprocess.run(argv, cwd=REPO, env={**cli_env(), "CRASH_AT": f"{when}:{k}"},
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, f"not killed at {when}:{k}: {done.stderr}"
    journals = open_journals(site) - before
    assert len(journals) == 1, "a killed run leaves its journal"
    journal = journals.pop()
    return journal, done_steps(journal)


def test_a_failover_killed_at_any_step_finishes_on_rerun(sites: Sites) -> None:
    a, b = sites.a, sites.b
    first = create(a, "qemu", next_vmid(), [RBD_STORAGE])
    enable(sites, a, [first])
    sync(sites, a)  # the dry run needs the config staged
    dry = sites.cli(b, "failover", "vm", str(first.vmid), "--dry-run", "--output-format", "json")
    assert dry.rc == 0, dry.err
    # the order they run in: phase by phase (one guest, one image: one step per phase)
    steps = [s["id"] for s in sorted(dry.json()["plan"]["steps"], key=lambda s: s["phase"])]
    # "before k" leaves the journal of "after k-1" plus step k's effect (the harder case:
    # step k must be redone and be idempotent); "after n" leaves every step done but the
    # journal not finished.
    cases = [("before", k) for k in range(1, len(steps) + 1)] + [("after", len(steps))]
    guests = [first] + [create(a, "qemu", next_vmid(), [RBD_STORAGE]) for _ in cases[1:]]
    with cleanup(sites, *guests):
        boots = started_on_a(sites, guests, beats=2)
        with mirror_paused(sites, a):  # site-a's copies keep the state of the stop
            for (when, k), guest in zip(cases, guests, strict=True):
                mine = [step.replace(str(first.vmid), str(guest.vmid)) for step in steps]
                journal, recorded = crash_failover(b, guest, when, k)
                assert recorded == mine[: k if when == "after" else k - 1], (when, k, recorded)
                rerun = run_cli(b, "failover", "vm", str(guest.vmid), "--output-format", "json")
                assert rerun.returncode == 0, f"{when}:{k}: " + rerun.stdout + rerun.stderr
                assert "continuing the unfinished run" in rerun.stderr
                outcomes = json.loads(rerun.stdout)["outcomes"]
                again = sorted(
                    (o["step"] for o in outcomes if o["status"] == "done"), key=mine.index
                )
                assert again == mine[len(recorded) :], (when, k, again)
                assert not journal.exists() and journal.with_suffix(".done").exists()
                seqs_a = runs(a, guest)[boots[guest]]
                assert seqs_a == set(range(len(seqs_a))), seqs_a
                assert_moved(sites, guest, boots[guest], seqs_a)
                assert start_requests(a, guest) == 1
                assert start_requests(b, guest) == 1, f"{when}:{k}: {guest.label} started twice"
                assert len(set(runs(b, guest)) - {boots[guest]}) == 1, runs(b, guest).keys()


def test_the_cluster_lock_lets_one_failover_run_at_a_time(sites: Sites) -> None:
    a, b = sites.a, sites.b
    one, two, three = (create(a, "qemu", next_vmid(), [RBD_STORAGE]) for _ in range(3))
    with cleanup(sites, one, two, three):
        started_on_a(sites, [one, two, three], beats=1)

        before = open_journals(b)
        with cluster_lock(b.root, "test"):
            held = sites.cli(b, "failover", "vm", str(one.vmid))
        assert held.rc == 7, held.out + held.err
        assert f"locked by test (pid {os.getpid()} " in held.err
        assert running(a, one) and not running(b, one) and not open_journals(b) - before

        # two processes: the second comes while the first holds the lock (kept there)
        first = popen_cli(b, "failover", "vm", str(two.vmid))
        try:
            wait_until(lambda: open_journals(b) - before or first.poll() is not None, timeout=60,
                       what="the first failover to take the lock", interval=0.005)  # fmt: skip
            os.kill(first.pid, signal.SIGSTOP)
            try:
                second = run_cli(b, "failover", "vm", str(three.vmid))
            finally:
                os.kill(first.pid, signal.SIGCONT)
            out, err = first.communicate(timeout=300)
        finally:
            if first.poll() is None:
                first.kill()
                first.communicate()
        assert first.returncode == 0, out + err
        assert second.returncode == 7, second.stdout + second.stderr
        assert f"locked by planned failover of {two.label} " in second.stderr
        assert f"(pid {first.pid} " in second.stderr
        assert running(b, two) and running(a, three) and not running(b, three)

        after = run_cli(b, "failover", "vm", str(one.vmid), str(three.vmid))
        assert after.returncode == 0, after.stdout + after.stderr
        assert running(b, one) and running(b, three)


def test_failover_refuses_a_hostile_staged_config(sites: Sites) -> None:
    a, b = sites.a, sites.b
    good = create(a, "qemu", next_vmid(), [RBD_STORAGE])
    enable(sites, a, [good])
    sync(sites, a)
    evil = next_vmid()
    staged = b.root / "pve-mirror" / "staging" / "site-a" / "qemu-server"
    planted = [staged / f"{evil}.conf", staged / "abc.conf"]
    try:
        for path in planted:
            if b.fs.real:
                # pmxcfs has no symlinks (ENOSYS): plant a file the peer never sent
                path.write_text("args: -device evil\n" + Path("/etc/passwd").read_text())
            else:
                path.symlink_to("/etc/passwd")
        why = "not listed in manifest.json" if b.fs.real else "is a symlink"
        before = open_journals(b)
        refused = sites.cli(b, "failover", "vm", str(evil))
        assert refused.rc == 4, refused.out + refused.err
        assert f"VM {evil}: staged config unusable: " in refused.err
        assert f"{evil}.conf: {why}, refused" in refused.err
        assert not b.guest_config_path("qemu", evil).exists()
        assert not open_journals(b) - before

        every = sites.cli(b, "failover", "--all", "--dry-run")
        assert every.rc == 4, every.out + every.err
        assert f"VM {evil}: " in every.err and "--skip-invalid" in every.err
        every = sites.cli(
            b, "failover", "--all", "--skip-invalid", "--dry-run", "--output-format", "json"
        )
        assert every.rc == 0, every.err
        assert f"left out (invalid staged config): VM {evil}: " in every.err
        groups = {s["guest"] for s in every.json()["plan"]["steps"]}
        assert good.label in groups and f"vm:{evil}" not in groups
    finally:
        for path in planted:
            path.unlink(missing_ok=True)
