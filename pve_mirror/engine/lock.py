"""One mutating pve-mirror operation at a time per cluster.

The lock is a directory created with ``mkdir`` (atomic on pmxcfs as on any POSIX
file system) holding an ``owner`` file: who took it, where and when.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from pve_mirror.errors import LockedError


def _owner_text(lock_dir: Path) -> str:
    try:
        owner = json.loads((lock_dir / "owner").read_text(encoding="utf-8"))
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner["at"])))
        return f"{owner['command']} (pid {owner['pid']} on {owner['host']}, since {since})"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process (no owner file)"


def _stale_pid(lock_dir: Path) -> int | None:
    """Give the owner's pid if the lock belongs to a dead process of this host, else None."""
    try:
        owner = json.loads((lock_dir / "owner").read_text(encoding="utf-8"))
        pid = int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if owner.get("host") != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid
    except PermissionError:
        return None
    return None


def _take_over(lock_dir: Path, dead_pid: int) -> None:
    """Move a dead process's lock aside; puts it back if a live one was grabbed by a race."""
    aside = lock_dir.with_name(f"lock.stale-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(lock_dir, aside)
    except FileNotFoundError:
        return
    try:
        moved_pid = int(json.loads((aside / "owner").read_text(encoding="utf-8"))["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        moved_pid = None
    if moved_pid != dead_pid:
        with suppress(OSError):
            os.rename(aside, lock_dir)
        return
    _remove(aside)


@contextmanager
def cluster_lock(root: Path, command: str) -> Iterator[Path]:
    """Hold ``<root>/pve-mirror/lock`` for the duration of the block.

    Raises LockedError naming the holder if another process has it. A lock left by
    a dead process of this host is taken over; one held on another node is not.
    """
    base = root / "pve-mirror"
    base.mkdir(parents=True, exist_ok=True)
    lock_dir = base / "lock"
    for _attempt in range(3):
        try:
            lock_dir.mkdir()
            break
        except FileExistsError:
            dead_pid = _stale_pid(lock_dir)
            if dead_pid is None:
                raise LockedError(f"locked by {_owner_text(lock_dir)}: {lock_dir}") from None
            _take_over(lock_dir, dead_pid)
    else:
        raise LockedError(f"locked by {_owner_text(lock_dir)}: {lock_dir}")
    owner = {
        "command": command,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "at": time.time(),
    }
    tmp = lock_dir / "owner.tmp"
    tmp.write_text(json.dumps(owner), encoding="utf-8")
    os.replace(tmp, lock_dir / "owner")
    try:
        yield lock_dir
    finally:
        _remove(lock_dir)


def _remove(lock_dir: Path) -> None:
    for name in ("owner", "owner.tmp"):
        with suppress(FileNotFoundError):
            (lock_dir / name).unlink()
    with suppress(FileNotFoundError):
        lock_dir.rmdir()
