"""The plan/journal/lock engine: reruns continue, failures stay within their guest."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from pve_mirror.engine.execute_plan import ALREADY_DONE, DONE, FAILED, SKIPPED, execute_plan
from pve_mirror.engine.journal import Journal
from pve_mirror.engine.lock import cluster_lock
from pve_mirror.engine.plan import Plan, Step, step
from pve_mirror.errors import CephError, ConfigError, LockedError


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
