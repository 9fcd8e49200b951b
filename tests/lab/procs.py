"""Lab daemons as processes: start, record by PID, verify, stop.

Each daemon runs in the foreground (``-f``) in its own session, with stdout and stderr
in a log file. Its PID goes to a pid file right away. Before any signal the PID is
checked against ``/proc/PID/cmdline`` (binary and our conf path), so a recycled PID
is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.lab.wait import WaitTimeoutError, wait_until

STOP_TIMEOUT = 15.0
KILL_TIMEOUT = 10.0

# Popen objects of daemons this Python process started, so they can be reaped
# (otherwise they linger as zombies of the test session).
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class DaemonSpec:
    """How to start one lab daemon; ``name`` is e.g. ``mon.a`` or ``rbd-mirror``."""

    name: str
    argv: list[str]
    cwd: Path
    log: Path
    pid_file: Path
    marker: str  # a string (our conf path) that must be in the process's cmdline
    env: tuple[tuple[str, str], ...] = ()  # set on top of the caller's environment


def cmdline(pid: int) -> list[str] | None:
    """Give the argv of a live (non-zombie) process, or None if it is gone."""
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return None
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_ours(pid: int, binary: str, marker: str) -> bool:
    """Tell whether PID is alive and runs ``binary`` with ``marker`` in its argv."""
    argv = cmdline(pid)
    if not argv:
        return False
    return Path(argv[0]).name == Path(binary).name and any(marker in a for a in argv)


def read_pid(pid_file: Path) -> int | None:
    """Give the PID recorded in ``pid_file``, or None if there is none."""
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def running_pid(spec: DaemonSpec) -> int | None:
    """Give the PID of ``spec``'s daemon if its recorded process is alive and ours."""
    pid = read_pid(spec.pid_file)
    if pid is not None and is_ours(pid, spec.argv[0], spec.marker):
        return pid
    return None


def start(spec: DaemonSpec) -> int:
    """Start the daemon of ``spec`` and record its PID; give the PID.

    Raises RuntimeError when the binary cannot be started.
    """
    spec.log.parent.mkdir(parents=True, exist_ok=True)
    spec.pid_file.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, LC_ALL="C")
    env.pop("CEPH_CONF", None)  # gotcha 4: rbd-mirror must find ./<site>.conf, nothing else
    env.pop("CEPH_ARGS", None)
    env.update(spec.env)
    with spec.log.open("ab") as out:
        try:
            proc = subprocess.Popen(
                spec.argv,
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise RuntimeError(f"cannot start {spec.name}: {exc}") from exc
    _children[proc.pid] = proc
    spec.pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def exited_early(spec: DaemonSpec) -> str | None:
    """Tell why a daemon we started is gone (exit status), or None while it runs."""
    pid = read_pid(spec.pid_file)
    if pid is None:
        return "never started"
    child = _children.get(pid)
    if child is not None:
        code = child.poll()
        if code is not None:
            return f"exited with status {code}"
        return None
    return None if cmdline(pid) else "is not running"


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def stop_pids(
    pids: dict[int, tuple[str, str]],
    timeout: float = STOP_TIMEOUT,
    sig: signal.Signals = signal.SIGTERM,
) -> list[str]:
    """Stop the processes ``{pid: (binary, marker)}`` that are still ours.

    Sends ``sig`` (SIGTERM), waits up to ``timeout`` seconds, then SIGKILLs the rest and
    waits again. Gives a list of notes (e.g. which ones needed SIGKILL). Raises
    RuntimeError if a process survives SIGKILL.
    """
    notes: list[str] = []
    live = {pid: bm for pid, bm in pids.items() if is_ours(pid, *bm)}
    for pid in live:
        _signal(pid, signal.SIGCONT)  # a frozen (SIGSTOPped) daemon cannot act on SIGTERM
        _signal(pid, sig)

    def all_gone() -> bool:
        return not any(cmdline(pid) for pid in live)

    try:
        wait_until(all_gone, timeout=timeout, what="lab daemons to exit", interval=0.05)
    except WaitTimeoutError:
        for pid, (binary, marker) in live.items():
            if is_ours(pid, binary, marker):
                notes.append(f"{binary} pid {pid} ignored SIGTERM; sent SIGKILL")
                _signal(pid, signal.SIGKILL)
        try:
            wait_until(all_gone, timeout=KILL_TIMEOUT, what="killed lab daemons to exit")
        except WaitTimeoutError as exc:
            raise RuntimeError(f"lab processes survived SIGKILL: {sorted(live)}") from exc
    for pid in live:
        child = _children.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=1.0)
    return notes


def find_strays(marker: str) -> dict[int, tuple[str, str]]:
    """Find live processes whose argv mentions ``marker`` (a path inside the lab dir).

    Used to clean up after a crashed run whose pid files are missing: only processes
    that name our own lab directory on their command line can match.
    """
    found: dict[int, tuple[str, str]] = {}
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        argv = cmdline(int(entry.name))
        if argv and any(marker in a for a in argv[1:]):
            found[int(entry.name)] = (argv[0], marker)
    return found


def rss_kib(pid: int) -> int:
    """Give the resident set size of ``pid`` in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except FileNotFoundError:
        return 0
    return 0


def freeze(pid: int, binary: str, marker: str) -> None:
    """SIGSTOP ``pid`` if it is still ours."""
    if is_ours(pid, binary, marker):
        _signal(pid, signal.SIGSTOP)


def thaw(pid: int, binary: str, marker: str) -> None:
    """SIGCONT ``pid`` if it is still ours."""
    if is_ours(pid, binary, marker):
        _signal(pid, signal.SIGCONT)
