"""A running simulated guest: one interactive qemu-io per disk, plus a heartbeat.

Each disk is opened read-write by its own ``qemu-io`` (librbd for RBD volumes)
fed commands on stdin, which lives as long as the guest. Start writes a marker
record to every disk; the guest is up once every marker and the first heartbeat
are written. Then a thread writes one heartbeat record per second to the first
disk. A failed write, or a qemu-io that exits, is the guest crashing. qemu-io
exits by itself when its stdin closes, so guests never outlive the simulator.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.lab import heartbeat

log = logging.getLogger("pvesim.guest")

QEMU_IO = "qemu-io"
OPEN_TIMEOUT = 60.0
COMMAND_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
HEARTBEAT_INTERVAL = 1.0
PROMPT = b"qemu-io> "


class GuestError(Exception):
    """A guest disk could not be opened or written; the message says which and why."""


@dataclass(frozen=True)
class DiskTarget:
    """A guest disk as qemu-io opens it."""

    key: str
    volume: str
    filename: str
    fmt: str = "raw"


def rbd_filename(
    pool: str, image: str, *, namespace: str = "", user: str = "admin", options: dict[str, str]
) -> str:
    """Give QEMU's ``rbd:`` filename; ``:`` and ``\\`` in values are escaped as QEMU wants."""
    path = f"{pool}/{namespace}/{image}" if namespace else f"{pool}/{image}"
    parts = [f"rbd:{_escape(path)}", f"id={_escape(user)}"]
    parts += [f"{k}={_escape(v)}" for k, v in options.items()]
    return ":".join(parts)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


class QemuIo:
    """One interactive qemu-io process on one disk."""

    def __init__(self, target: DiskTarget, workdir: Path) -> None:
        self.target = target
        self._record_file = workdir / f"record-{target.key}.bin"
        self._lock = threading.Lock()
        self.transcript: list[str] = []
        self.proc = subprocess.Popen(
            [QEMU_IO, "-f", target.fmt, target.filename],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "LC_ALL": "C"},
        )
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()

    @property
    def pid(self) -> int:
        """Give the qemu-io process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """Tell whether the process still runs."""
        return self.proc.poll() is None

    def _read_until(self, marker: bytes, deadline: float) -> tuple[str, bool]:
        """Read output until it ends with ``marker``; give (text, found)."""
        buf = b""
        while not buf.endswith(marker):
            left = deadline - time.monotonic()
            if left <= 0:
                return buf.decode(errors="replace"), False
            ready, _, _ = select.select([self._fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(self._fd, 65536)
            if not chunk:
                return buf.decode(errors="replace"), False
            buf += chunk
        return buf.decode(errors="replace"), True

    def wait_open(self, timeout: float = OPEN_TIMEOUT) -> None:
        """Wait until qemu-io has opened the disk; raises GuestError if it cannot."""
        text, found = self._read_until(PROMPT, time.monotonic() + timeout)
        self.transcript.append(text)
        if not found:
            self.kill()
            why = _last_error(text) or ("timeout" if self.alive() else "qemu-io exited")
            raise GuestError(f"unable to open disk {self.target.key} ({self.target.volume}): {why}")

    def command(self, cmd: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run one qemu-io command and give its output; raises GuestError if qemu-io is gone.

        One command at a time: qemu-io reads stdin with stdio buffering, so a second
        line sent at once would sit unread until more input comes. Its prompt after
        the output says the command is done.
        """
        with self._lock:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(f"{cmd}\n".encode())
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                raise GuestError(f"disk {self.target.key}: qemu-io exited") from None
            text, found = self._read_until(PROMPT, time.monotonic() + timeout)
            self.transcript.append(text)
            del self.transcript[:-20]
            if not found:
                raise GuestError(
                    f"disk {self.target.key}: qemu-io "
                    f"{'timed out' if self.alive() else 'exited'} on '{cmd}'"
                )
            return text[: -len(PROMPT)]

    def write_record(self, offset: int, record: bytes) -> None:
        """Write one record at ``offset``; raises GuestError with qemu-io's reason."""
        self._record_file.write_bytes(record)
        out = self.command(f"write -s {self._record_file} {offset} {len(record)}")
        if f"wrote {len(record)}/{len(record)} bytes" not in out:
            why = _last_error(out) or out.strip().replace("\n", " ")
            raise GuestError(f"disk {self.target.key} ({self.target.volume}): {why}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Close stdin so qemu-io flushes and exits; kill it if it does not in time."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def kill(self) -> None:
        """Kill the process and reap it."""
        if self.alive():
            self.proc.kill()
        self.proc.wait()


def _last_error(text: str) -> str:
    """Give the most telling error line of qemu-io output ('write failed: ...' first)."""
    lines = [ln.replace(PROMPT.decode(), "").strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    for ln in reversed(lines):
        if "failed" in ln or "error" in ln.lower() or "can't open" in ln:
            return ln.removeprefix("qemu-io: ")
    return lines[-1].removeprefix("qemu-io: ") if lines else ""


class Guest:
    """A started guest: its disk processes and heartbeat thread."""

    def __init__(
        self,
        kind: str,
        vmid: int,
        disks: list[DiskTarget],
        workdir: Path,
        on_crash: Callable[[Guest, str], None],
    ) -> None:
        self.kind = kind
        self.vmid = vmid
        self.disks = disks
        self.workdir = workdir
        self.on_crash = on_crash
        self.procs: list[QemuIo] = []
        self.boot = 0
        self.seq = 0
        self.started = 0.0
        self.crash_reason: str | None = None
        # QEMU's run state as QMP query-status gives it (qemu-server's qmpstatus)
        self.qmpstatus = "running"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """Give the pid of the first disk's qemu-io (the guest's "kvm" process)."""
        return self.procs[0].pid if self.procs else None

    def running(self) -> bool:
        """Tell whether the guest runs: started, not stopped, not crashed."""
        return self._thread is not None and not self._stop.is_set() and self.crash_reason is None

    def start(self, task_log: Callable[[str], None]) -> None:
        """Open every disk read-write, write the markers and the first heartbeat.

        Raises GuestError (after stopping what was started) when a disk cannot be
        opened or written, e.g. "Read-only file system" on a non-primary image.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.boot = int(self.started)
        try:
            for target in self.disks:
                self.procs.append(QemuIo(target, self.workdir))
            for index, proc in enumerate(self.procs):
                proc.wait_open()
                proc.write_record(
                    heartbeat.MARKER_OFFSET,
                    heartbeat.encode_marker(self.vmid, index, self.boot, time.time()),
                )
                task_log(f"disk {proc.target.key} ({proc.target.volume}) opened read-write")
            self._beat()
        except GuestError:
            self._kill_all()
            raise
        self._thread = threading.Thread(target=self._run, name=f"guest-{self.vmid}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        if not self.procs:
            return
        record = heartbeat.encode_heartbeat(self.vmid, self.boot, self.seq, time.time())
        self.procs[0].write_record(heartbeat.heartbeat_offset(self.boot, self.seq), record)
        self.seq += 1

    def pause(self) -> None:
        """Pause the guest (QMP ``stop``): its disks stay open, it writes nothing."""
        self.qmpstatus = "paused"

    def resume(self) -> None:
        """Resume a paused guest (QMP ``cont``)."""
        self.qmpstatus = "running"

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL):
            if self.qmpstatus != "running":
                continue
            try:
                dead = [p.target.key for p in self.procs if not p.alive()]
                if dead:
                    raise GuestError(f"qemu-io of disk {dead[0]} exited")
                self._beat()
            except GuestError as exc:
                if self._stop.is_set():  # stopping: qemu-io closing is expected
                    return
                self.crash_reason = str(exc)
                log.warning("guest %s crashed: %s", self.vmid, exc)
                self._kill_all()
                self.on_crash(self, str(exc))
                return

    def stop(self) -> None:
        """Stop the heartbeat and close every disk (qemu-io flushes and exits)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(COMMAND_TIMEOUT + 5)
        for proc in self.procs:
            proc.stop()

    def _kill_all(self) -> None:
        for proc in self.procs:
            proc.kill()
            if proc.proc.stdin is not None:
                proc.proc.stdin.close()
            if proc.proc.stdout is not None:
                proc.proc.stdout.close()
