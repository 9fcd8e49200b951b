"""Worker tasks with PVE UPIDs, run in threads, polled through the task API.

A task ends as pve-common's PVE::RESTEnvironment::fork_worker ends it: ``OK``, the
first line of the error it died with, or ``WARNINGS: N`` when it logged N warnings
(log_warn) and did not fail. PVE::UPID::status_is_error counts only the error as a
failure.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UPID_RE = re.compile(
    r"^UPID:(?P<node>[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):(?P<pid>[0-9A-F]{8}):"
    r"(?P<pstart>[0-9A-F]{8,9}):(?P<starttime>[0-9A-F]{8}):(?P<type>[^:\s]+):"
    r"(?P<id>[^:\s]*):(?P<user>[^:\s]+):$"
)


class TaskError(Exception):
    """Raised inside a worker: its message becomes the task's exitstatus."""


@dataclass(frozen=True)
class Upid:
    """The parts of a UPID."""

    node: str
    pid: int
    pstart: int
    starttime: int
    type: str
    id: str
    user: str

    def __str__(self) -> str:
        return (
            f"UPID:{self.node}:{self.pid:08X}:{self.pstart:08X}:{self.starttime:08X}:"
            f"{self.type}:{self.id}:{self.user}:"
        )


def parse_upid(text: str) -> Upid | None:
    """Give the parts of a UPID string, or None if it is not one."""
    m = UPID_RE.match(text)
    if not m:
        return None
    return Upid(
        node=m["node"],
        pid=int(m["pid"], 16),
        pstart=int(m["pstart"], 16),
        starttime=int(m["starttime"], 16),
        type=m["type"],
        id=m["id"],
        user=m["user"],
    )


def _process_start_ticks() -> int:
    """Give this process's start time in clock ticks since boot (field 22 of stat)."""
    try:
        stat = Path(f"/proc/{os.getpid()}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass
class Task:
    """One worker task and its log."""

    upid: Upid
    status: str = "running"
    exitstatus: str | None = None
    log: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    warnings: int = 0

    def status_dict(self) -> dict[str, Any]:
        """Give the task as GET /nodes/{node}/tasks/{upid}/status does."""
        user, _, tokenid = self.upid.user.partition("!")
        out: dict[str, Any] = {
            "upid": str(self.upid),
            "node": self.upid.node,
            "pid": self.upid.pid,
            "pstart": self.upid.pstart,
            "starttime": self.upid.starttime,
            "type": self.upid.type,
            "id": self.upid.id,
            "user": user,
            "status": self.status,
        }
        if tokenid:
            out["tokenid"] = tokenid
        if self.exitstatus is not None:
            out["exitstatus"] = self.exitstatus
        return out


class TaskLog:
    """Where a running worker writes its log lines."""

    def __init__(self, task: Task, lock: threading.Lock) -> None:
        self._task = task
        self._lock = lock

    def __call__(self, line: str) -> None:
        with self._lock:
            self._task.log.extend(line.splitlines() or [""])

    def warn(self, message: str) -> None:
        """Log ``WARN: message`` and count it (PVE::RESTEnvironment::log_warn)."""
        with self._lock:
            self._task.log.append(f"WARN: {message.strip()}")
            self._task.warnings += 1


Worker = Callable[[TaskLog], None]


class TaskRegistry:
    """Creates tasks, runs their workers in threads and answers task queries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, Task] = {}
        self._pstart = _process_start_ticks()
        # UPIDs name a worker pid; threads have none, so hand out unique fake ones.
        self._pids = itertools.count(os.getpid() * 16 + 1)

    def start(self, node: str, dtype: str, obj_id: str, user: str, worker: Worker) -> Task:
        """Create a task and run ``worker`` for it in a thread; give the task at once.

        The worker fails the task by raising (TaskError or any exception); its
        message, first line only, becomes the exitstatus as in PVE.
        """
        with self._lock:
            upid = Upid(
                node=node,
                pid=next(self._pids) & 0xFFFFFFFF,
                pstart=self._pstart,
                starttime=int(time.time()),
                type=dtype,
                id=obj_id,
                user=user,
            )
            task = Task(upid=upid)
            self._tasks[str(upid)] = task
        log = TaskLog(task, self._lock)
        thread = threading.Thread(
            target=self._run, args=(task, log, worker), name=f"task-{dtype}-{obj_id}", daemon=True
        )
        thread.start()
        return task

    def _run(self, task: Task, log: TaskLog, worker: Worker) -> None:
        try:
            worker(log)
        except Exception as exc:  # noqa: BLE001 - any worker error ends the task like PVE's die
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            log(f"TASK ERROR: {message}")
            exitstatus = message
        else:
            exitstatus = f"WARNINGS: {task.warnings}" if task.warnings else "OK"
            log(f"TASK {exitstatus}")
        with self._lock:
            task.status = "stopped"
            task.exitstatus = exitstatus
        task.done.set()

    def get(self, upid: str) -> Task | None:
        """Give the task with this UPID, if this simulator ran it."""
        with self._lock:
            return self._tasks.get(upid)

    def all(self) -> list[Task]:
        """Give every task, oldest first."""
        with self._lock:
            return list(self._tasks.values())

    def log_lines(self, task: Task) -> list[str]:
        """Give a copy of the task's log lines."""
        with self._lock:
            return list(task.log)
