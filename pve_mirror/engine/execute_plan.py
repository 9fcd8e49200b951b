"""Runs a plan: phase after phase, the steps of a phase concurrently with a bound.

Each finished step is journalled. A step done in an earlier run is not repeated.
When a step fails, the later steps of the same group (guest) are skipped and every
other group goes on; the outcome lists every step. A step that meets an OSError (a
file system refusing, e.g. /etc/pve without quorum) fails like any other. If the
journal itself cannot be written the run stops: no further step starts, since a rerun
could not know what it did.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pve_mirror.engine.journal import Journal
from pve_mirror.engine.plan import Plan, Step
from pve_mirror.errors import FileSystemError, PveMirrorError
from pve_mirror.files import fs_error

StepFunction = Callable[[Step], str]
Progress = Callable[[str], None]

DONE = "done"
ALREADY_DONE = "already-done"
FAILED = "failed"
SKIPPED = "skipped"
STOPPED = "skipped: the run stopped"


@dataclass(frozen=True)
class StepOutcome:
    """What became of one step."""

    step: Step
    status: str
    detail: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Give the outcome as plain data."""
        return {
            "step": self.step.id,
            "guest": self.step.group,
            "status": self.status,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


def execute_plan(
    plan: Plan,
    functions: Mapping[str, StepFunction],
    journal: Journal | None,
    *,
    concurrency: int = 8,
    progress: Progress | None = None,
) -> list[StepOutcome]:
    """Run every step of ``plan`` and give one outcome per step, in plan order.

    A step function gives a one-line detail or raises PveMirrorError (or OSError);
    anything else it raises is a bug and propagates (the step is not journalled, so a
    rerun retries it). Raises FileSystemError once the steps under way have ended if
    the journal cannot be read or written, KeyError if the plan has a kind with no
    function.
    """
    missing = {s.kind for s in plan.steps} - set(functions)
    if missing:
        raise KeyError(f"no function for step kinds {sorted(missing)}")
    done_before = journal.done_steps() if journal else {}
    failed_groups: set[str] = set()
    outcomes: dict[str, StepOutcome] = {}
    total = len(plan.steps)
    counter = _Counter(total, progress)
    journal_errors: list[FileSystemError] = []
    stop = threading.Event()

    def run_one(item: Step) -> StepOutcome:
        if item.id in done_before:
            return counter.report(StepOutcome(item, ALREADY_DONE, done_before[item.id], 0.0))
        if stop.is_set():
            return counter.report(StepOutcome(item, SKIPPED, STOPPED, 0.0))
        started = time.monotonic()
        try:
            detail = functions[item.kind](item)
        except PveMirrorError as exc:
            status, detail = FAILED, str(exc)
        except OSError as exc:
            status, detail = FAILED, str(fs_error(exc, action="access"))
        except BaseException:
            stop.set()  # a bug: the steps still queued must not run either
            raise
        else:
            status = DONE
        if journal:
            try:
                journal.record(item.id, status, detail)
            except FileSystemError as exc:
                journal_errors.append(exc)
                stop.set()
        return counter.report(StepOutcome(item, status, detail, time.monotonic() - started))

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for phase in plan.phases():
            runnable = []
            for item in phase:
                if item.group in failed_groups:
                    why = "skipped: an earlier step of this guest failed"
                    outcomes[item.id] = counter.report(StepOutcome(item, SKIPPED, why, 0.0))
                elif stop.is_set():
                    outcomes[item.id] = counter.report(StepOutcome(item, SKIPPED, STOPPED, 0.0))
                else:
                    runnable.append(item)
            for outcome in pool.map(run_one, runnable):
                outcomes[outcome.step.id] = outcome
                if outcome.status == FAILED:
                    failed_groups.add(outcome.step.group)
    if journal_errors:
        raise journal_errors[0]
    return [outcomes[s.id] for s in plan.steps]


class _Counter:
    """Thread-safe progress lines: ``[n/total] status: description``."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self.progress = progress
        self.count = 0
        self.lock = threading.Lock()

    def report(self, outcome: StepOutcome) -> StepOutcome:
        with self.lock:
            self.count += 1
            if self.progress:
                detail = f" ({outcome.detail})" if outcome.detail else ""
                self.progress(
                    f"[{self.count}/{self.total}] {outcome.status}: "
                    f"{outcome.step.description}{detail}"
                )
        return outcome


def all_succeeded(outcomes: list[StepOutcome]) -> bool:
    """Tell whether every step is done (now or in an earlier run)."""
    return all(o.status in (DONE, ALREADY_DONE) for o in outcomes)


def run_journalled(
    root: Path,
    plan: Plan,
    functions: Mapping[str, StepFunction],
    *,
    concurrency: int,
    progress: Progress | None = None,
) -> list[StepOutcome]:
    """Run ``plan`` under the cluster lock of ``root`` with a journal; give the outcomes.

    A rerun of the same plan after a crash finds the journal and continues; once every
    step is done the journal is marked finished. Raises LockedError naming the holder.
    """
    from pve_mirror.engine.lock import cluster_lock

    with cluster_lock(root, plan.title):
        journal = Journal(root / "pve-mirror" / "journal", plan.action, plan.fingerprint())
        if journal.exists():
            journal.check_resumable()  # too old or another format: refused, not continued
            if progress:
                progress(f"continuing the unfinished run recorded in {journal.path}")
        journal.begin(plan.title)
        outcomes = execute_plan(
            plan, functions, journal, concurrency=concurrency, progress=progress
        )
        if all_succeeded(outcomes):
            journal.finish()
    return outcomes
