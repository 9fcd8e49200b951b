"""The plan/journal/lock engine: reruns continue, failures stay within their guest."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pve_mirror.engine import journal as journal_module
from pve_mirror.engine.execute_plan import (
    ALREADY_DONE,
    DONE,
    FAILED,
    SKIPPED,
    all_succeeded,
    execute_plan,
)
from pve_mirror.engine.journal import Journal
from pve_mirror.engine.lock import cluster_lock
from pve_mirror.engine.plan import Plan, Step, step
from pve_mirror.errors import CephError, ConfigError, FileSystemError, LockedError


def _plan() -> Plan:
    plan = Plan("failover", "test")
    for guest in ("vm:100", "vm:101"):
        plan.add(step("demote", 1, f"{guest}/disk", guest, f"demote {guest}"))
        plan.add(step("promote", 2, f"{guest}/disk", guest, f"promote {guest}"))
        plan.add(step("start", 3, guest, guest, f"start {guest}"))
    return plan


def test_failure_skips_only_that_guests_later_steps(tmp_path: Path) -> None:
    ran: list[str] = []

    def work(item: Step) -> str:
        ran.append(item.id)
        if item.id == "promote:vm:100/disk":
            raise CephError("boom")
        return "ok"

    functions = {"demote": work, "promote": work, "start": work}
    journal = Journal(tmp_path, "failover", "x")
    outcomes = execute_plan(_plan(), functions, journal, concurrency=2)
    status = {o.step.id: o.status for o in outcomes}
    assert status == {
        "demote:vm:100/disk": DONE,
        "promote:vm:100/disk": FAILED,
        "start:vm:100": SKIPPED,
        "demote:vm:101/disk": DONE,
        "promote:vm:101/disk": DONE,
        "start:vm:101": DONE,
    }
    assert "start:vm:100" not in ran


def test_rerun_continues_and_never_repeats_a_done_step(tmp_path: Path) -> None:
    calls: list[str] = []
    fail = {"promote:vm:100/disk"}

    def work(item: Step) -> str:
        calls.append(item.id)
        if item.id in fail:
            raise CephError("not yet")
        return "ok"

    functions = {"demote": work, "promote": work, "start": work}
    journal = Journal(tmp_path, "failover", _plan().fingerprint())
    execute_plan(_plan(), functions, journal)
    calls.clear()
    fail.clear()
    outcomes = execute_plan(_plan(), functions, journal)
    assert sorted(calls) == ["promote:vm:100/disk", "start:vm:100"]
    assert {o.status for o in outcomes} == {DONE, ALREADY_DONE}


def test_journal_ignores_a_torn_last_line_but_not_a_corrupt_middle(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "a", "b")
    journal.record("s1", "done", "ok")
    with journal.path.open("a") as handle:
        handle.write('{"step": "s2", "ev')
    assert journal.done_steps() == {"s1": "ok"}
    journal.path.write_text('garbage\n{"step": "s1", "event": "done", "at": 1}\n')
    with pytest.raises(ConfigError, match=":1:"):
        journal.entries()


def test_finished_journal_lets_the_next_run_start_afresh(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "a", "b")
    journal.record("s1", "done")
    journal.finish()
    assert not journal.exists()
    assert journal.done_steps() == {}
    assert journal.finished_path.exists()


def test_plan_text_and_fingerprint_are_stable() -> None:
    assert _plan().fingerprint() == _plan().fingerprint()
    text = _plan().render_text()
    assert text.splitlines()[1] == "    1. [vm:100] demote vm:100"
    assert json.loads(json.dumps(_plan().to_dict()))["steps"][0]["kind"] == "demote"


def _hold_lock(
    root: str, ready: multiprocessing.synchronize.Event, go: multiprocessing.synchronize.Event
) -> None:
    with cluster_lock(Path(root), "failover vm 100"):
        ready.set()
        go.wait(30)


def test_second_lock_holder_is_refused_with_the_owner(tmp_path: Path) -> None:
    ready, go = multiprocessing.Event(), multiprocessing.Event()
    proc = multiprocessing.Process(target=_hold_lock, args=(str(tmp_path), ready, go))
    proc.start()
    try:
        assert ready.wait(30)
        with (
            pytest.raises(LockedError, match=r"locked by failover vm 100 \(pid \d+"),
            cluster_lock(tmp_path, "failover vm 101"),
        ):
            pass
    finally:
        go.set()
        proc.join(30)
    with cluster_lock(tmp_path, "after"):
        assert (tmp_path / "pve-mirror" / "lock" / "owner").exists()
    assert not (tmp_path / "pve-mirror" / "lock").exists()


def test_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    proc = multiprocessing.Process(target=os._exit, args=(0,))
    proc.start()
    proc.join()
    lock_dir = tmp_path / "pve-mirror" / "lock"
    lock_dir.mkdir(parents=True)
    owner = {"command": "x", "pid": proc.pid, "host": os.uname().nodename, "at": 0}
    (lock_dir / "owner").write_text(json.dumps(owner))
    with cluster_lock(tmp_path, "rerun"):
        assert json.loads((lock_dir / "owner").read_text())["command"] == "rerun"


# --- the journal stays small (pmxcfs: 1 MiB per file) and a rerun still continues ----


def _big_plan(guests: int) -> Plan:
    """A failover-like plan: per guest 2 disks, 17 steps (as a real failover has)."""
    plan = Plan("failover", f"{guests} guests")
    for n in range(guests):
        vmid = 1000 + n
        g = f"vm:{vmid}"
        plan.add(step("stop-source", 1, g, g, f"shut down {g}"))
        for disk in range(2):
            img = f"rbd/vm-{vmid}-disk-{disk}"
            for phase, kind in enumerate(
                ("final-snapshot", "wait-copied", "demote", "wait-demoted", "promote", "schedule"),
                start=2,
            ):
                plan.add(step(kind, phase, img, g, f"{kind} {img}", image=img))
        for phase, kind in enumerate(("set-aside", "install-config", "record", "start"), start=8):
            plan.add(step(kind, phase, g, g, f"{kind} {g}"))
    return plan


def _detail(item: Step) -> str:
    """Give what a real failover step reports, about as long."""
    return {
        "stop-source": "stopped (UPID:pve-a1:0001F2A3:00B1C2D3:65A1B2C3:qmshutdown:1000:root@pam:)",
        "final-snapshot": "mirror snapshot 4711 taken",
        "install-config": "installed /etc/pve/nodes/pve-b1/qemu-server/1000.conf",
    }.get(item.kind, "done in 0.4 s")


def _functions(plan: Plan, work: Callable[[Step], str]) -> dict[str, Callable[[Step], str]]:
    return {s.kind: work for s in plan.steps}


def test_journal_of_300_guests_keeps_every_file_small(tmp_path: Path) -> None:
    plan = _big_plan(300)
    journal = Journal(tmp_path, plan.action, plan.fingerprint())
    outcomes = execute_plan(plan, _functions(plan, _detail), journal, concurrency=8)
    assert {o.status for o in outcomes} == {DONE}
    sizes = [p.stat().st_size for p in journal.segments()]
    assert len(sizes) > 1
    assert max(sizes) <= journal_module.SEGMENT_BYTES < 1024 * 1024 // 8
    # bytes per guest: 3.6 KB before (a start line per step, float times), 1.9 KB now
    assert sum(sizes) / 300 < 2100
    assert set(journal.done_steps()) == {s.id for s in plan.steps}
    journal.finish()
    assert journal.segments() == []
    assert len(journal.segments(journal_module.FINISHED)) == len(sizes)


def test_journal_keeps_only_finished_steps_in_short_lines(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "a", "b")
    outcomes = execute_plan(_plan(), _functions(_plan(), lambda _s: "x" * 500), journal)
    lines = journal.path.read_text().splitlines()
    assert len(lines) == len(outcomes)  # one line per finished step, none at its start
    first = json.loads(lines[0])
    assert first["event"] == "done" and isinstance(first["at"], int)
    assert len(first["detail"]) == journal_module.DETAIL_CHARS


def test_rerun_continues_across_segments_after_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "SEGMENT_BYTES", 400)
    plan = _big_plan(6)
    calls: list[str] = []
    crash = [len(plan.steps) // 2]

    class CrashError(Exception):
        pass

    def work(item: Step) -> str:
        calls.append(item.id)
        if len(calls) == crash[0]:
            crash[0] = 0
            raise CrashError  # not a PveMirrorError: the run dies like a killed process
        return "ok"

    with pytest.raises(CrashError):
        execute_plan(plan, _functions(plan, work), Journal(tmp_path, "f", "x"), concurrency=1)
    first_run = list(calls)
    journal = Journal(tmp_path, "f", "x")
    assert len(journal.segments()) > 2
    calls.clear()
    outcomes = execute_plan(plan, _functions(plan, work), journal, concurrency=1)
    assert all_succeeded(outcomes)
    # The crashed step is the only one that runs twice.
    assert sorted(first_run[:-1] + calls) == sorted(s.id for s in plan.steps)
    assert calls[0] == first_run[-1]


def test_a_torn_last_line_is_cut_before_the_rerun_appends(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "a", "b")
    journal.record("s1", "done", "ok")
    with journal.path.open("a") as handle:
        handle.write('{"step": "s2", "ev')
    rerun = Journal(tmp_path, "a", "b")
    rerun.record("s3", "done", "ok")
    assert rerun.done_steps() == {"s1": "ok", "s3": "ok"}


def test_only_the_newest_finished_journals_are_kept(tmp_path: Path) -> None:
    for n in range(journal_module.KEEP_FINISHED + 3):
        journal = Journal(tmp_path, "reconcile", f"{n:04d}")
        journal.record("s", "done")
        journal.finish()
        os.utime(journal.finished_path, (1000 + n, 1000 + n))
    journal_module.prune_finished(tmp_path, journal_module.KEEP_FINISHED)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert len(kept) == journal_module.KEEP_FINISHED
    assert kept[0] == "reconcile-0003.done"
    # A byte budget too: older runs go first, the newest always stays.
    journal_module.prune_finished(tmp_path, 100, keep_bytes=1)
    assert [p.name for p in tmp_path.iterdir()] == [f"reconcile-{len(kept) + 2:04d}.done"]


def test_an_oserror_fails_only_its_guest_with_one_line(tmp_path: Path) -> None:
    def work(item: Step) -> str:
        if item.id == "promote:vm:100/disk":
            raise OSError(errno.EROFS, "Read-only file system", "/etc/pve/nodes/a/x")
        return "ok"

    outcomes = execute_plan(_plan(), _functions(_plan(), work), Journal(tmp_path, "f", "x"))
    failed = [o for o in outcomes if o.status == FAILED]
    assert [o.step.id for o in failed] == ["promote:vm:100/disk"]
    assert failed[0].detail == "/etc/pve/nodes/a/x: cannot access: read-only file system"
    assert {o.status for o in outcomes if o.step.group == "vm:101"} == {DONE}


def test_a_journal_that_cannot_be_written_stops_the_run(tmp_path: Path) -> None:
    (tmp_path / "journal").write_text("a file where the directory should be")
    ran: list[str] = []

    def work(item: Step) -> str:
        ran.append(item.id)
        return "ok"

    journal = Journal(tmp_path / "journal", "f", "x")
    with pytest.raises(FileSystemError, match=r"journal: cannot create the directory"):
        execute_plan(_plan(), _functions(_plan(), work), journal, concurrency=1)
    assert ran == ["demote:vm:100/disk"]  # nothing starts once a result cannot be kept


# --- the lock on pmxcfs terms: never renamed, never two holders, never a live one's --


def _dead_pid() -> int:
    proc = multiprocessing.Process(target=os._exit, args=(0,))
    proc.start()
    proc.join()
    assert proc.pid is not None
    return proc.pid


def _stale_lock(root: Path, pid: int, name: str = "owner") -> Path:
    lock_dir = root / "pve-mirror" / "lock"
    lock_dir.mkdir(parents=True)
    owner = {"command": "crashed", "pid": pid, "host": socket.gethostname(), "at": 1.0}
    (lock_dir / name).write_text(json.dumps(owner))
    return lock_dir


def test_take_over_never_renames_the_lock_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_rename = os.rename

    def pmxcfs_rename(src: Any, dst: Any) -> None:
        # pmxcfs refuses to rename a directory that holds files.
        if Path(src).is_dir() and any(Path(src).iterdir()):
            raise OSError(errno.ENOTEMPTY, "Directory not empty", str(src))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", pmxcfs_rename)
    lock_dir = _stale_lock(tmp_path, _dead_pid())
    with cluster_lock(tmp_path, "rerun"):
        assert json.loads((lock_dir / "owner").read_text())["command"] == "rerun"
        assert sorted(os.listdir(lock_dir)) == ["owner"]
    assert not lock_dir.exists()


def _take(root: str, go: Any, attempted: Any, results: Any, others: int) -> None:
    go.wait(30)
    try:
        with cluster_lock(Path(root), "taker"):
            results.put("won")
            with attempted.get_lock():
                attempted.value += 1
            # Hold until every other taker has tried (a deadline, not a sleep).
            deadline = time.monotonic() + 30
            while attempted.value < others + 1 and time.monotonic() < deadline:
                time.sleep(0.01)
    except LockedError as exc:
        results.put(f"locked: {exc}")
        with attempted.get_lock():
            attempted.value += 1


def test_of_racing_takers_exactly_one_wins(tmp_path: Path) -> None:
    lock_dir = _stale_lock(tmp_path, _dead_pid())
    go = multiprocessing.Event()
    attempted = multiprocessing.Value("i", 0)
    results: multiprocessing.Queue[str] = multiprocessing.Queue()
    count = 6
    procs = [
        multiprocessing.Process(
            target=_take, args=(str(tmp_path), go, attempted, results, count - 1)
        )
        for _ in range(count)
    ]
    for proc in procs:
        proc.start()
    go.set()
    for proc in procs:
        proc.join(60)
    got = [results.get(timeout=5) for _ in range(count)]
    assert got.count("won") == 1, got
    assert all(g.startswith("locked: locked by ") for g in got if g != "won"), got
    assert not lock_dir.exists()


def test_a_dead_takers_claim_is_put_back_and_taken_over(tmp_path: Path) -> None:
    taker = _dead_pid()
    lock_dir = _stale_lock(tmp_path, _dead_pid(), f"claim-{socket.gethostname()}-{taker}")
    with cluster_lock(tmp_path, "rerun"):
        assert json.loads((lock_dir / "owner").read_text())["command"] == "rerun"
        assert os.listdir(lock_dir) == ["owner"]


def test_a_live_owner_or_taker_keeps_the_lock(tmp_path: Path) -> None:
    lock_dir = _stale_lock(tmp_path, os.getppid())  # alive: pytest's parent
    before = (lock_dir / "owner").read_bytes()
    with pytest.raises(LockedError, match=r"locked by crashed \(pid"), cluster_lock(tmp_path, "x"):
        pass
    assert (lock_dir / "owner").read_bytes() == before
    os.rename(lock_dir / "owner", lock_dir / f"claim-{socket.gethostname()}-{os.getppid()}")
    with pytest.raises(LockedError, match="taking over"), cluster_lock(tmp_path, "x"):
        pass
    assert os.listdir(lock_dir) == [f"claim-{socket.gethostname()}-{os.getppid()}"]


def test_a_lock_of_another_node_is_not_taken_over(tmp_path: Path) -> None:
    lock_dir = tmp_path / "pve-mirror" / "lock"
    lock_dir.mkdir(parents=True)
    owner = {"command": "failover", "pid": _dead_pid(), "host": "other-node", "at": 1.0}
    (lock_dir / "owner").write_text(json.dumps(owner))
    with pytest.raises(LockedError, match="rerun the command there"), cluster_lock(tmp_path, "x"):
        pass
    assert (lock_dir / "owner").exists()


def test_the_error_that_ends_the_block_is_kept_and_the_lock_released(tmp_path: Path) -> None:
    with pytest.raises(CephError, match="boom"), cluster_lock(tmp_path, "x"):
        raise CephError("boom")
    assert not (tmp_path / "pve-mirror" / "lock").exists()


def test_a_lock_the_file_system_refuses_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "pve-mirror").write_text("not a directory")
    with (
        pytest.raises(FileSystemError, match=r"pve-mirror: cannot create the directory"),
        cluster_lock(tmp_path, "x"),
    ):
        pass
