"""One mutating pve-mirror operation at a time per cluster.

The lock is a directory, ``<root>/pve-mirror/lock``, created with ``mkdir`` (atomic,
cluster-wide on pmxcfs, as on any POSIX file system), holding an ``owner`` file: who
took it, where and when.

A lock left by a dead process of this host is taken over in place; the directory is
never moved or removed on the way: pmxcfs cannot rename a non-empty directory
(ENOTEMPTY), and a lock that is absent even for a moment could be taken by a third
process. The taker renames ``owner`` to ``claim-<host>-<pid>``; a rename succeeds for
exactly one of several takers, the others find no owner and give up. It then checks
that what it moved is the dead owner it saw: if so, it writes itself into its claim
and renames the claim back to ``owner``; if not (the lock changed hands meanwhile)
it puts the file back untouched. Renames move and never copy, so at any moment at
most one file of the directory names an owner. A taker that dies holding its claim
leaves that file alone in the directory; the next one renames it back to ``owner``
and starts over.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

from pve_mirror.errors import FileSystemError, LockedError, PolicyError, PveMirrorError
from pve_mirror.files import fs_error

OWNER = "owner"
CLAIM = "claim-"
# Rounds of a lost race (another taker was first, the lock changed hands) before giving up.
ATTEMPTS = 5
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Owner:
    """Who holds a lock."""

    command: str
    pid: int
    host: str
    at: float

    @classmethod
    def me(cls, command: str) -> Owner:
        """Give this process as the owner, for ``command``."""
        return cls(command, os.getpid(), socket.gethostname(), time.time())

    def describe(self) -> str:
        """Give ``<command> (pid N on HOST, since TIME)``."""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.at))
        return f"{self.command} (pid {self.pid} on {self.host}, since {since})"

    def dead_here(self) -> bool:
        """Tell whether the owner is a process of this host that no longer runs."""
        return self.host == socket.gethostname() and not _alive(self.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_owner(path: Path) -> Owner | None:
    """Give the owner recorded in ``path``; None if it is missing or unreadable as one.

    Raises FileSystemError if the file system fails the read.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Owner(str(raw["command"]), int(raw["pid"]), str(raw["host"]), float(raw["at"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None
    except OSError as exc:
        raise fs_error(exc, path, "read") from exc


def _write(path: Path, owner: Owner) -> None:
    """Make ``path`` name ``owner``: a temporary file, then a rename (no directory made)."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(json.dumps(asdict(owner)))
    os.replace(tmp, path)


@contextmanager
def cluster_lock(root: Path, command: str) -> Iterator[Path]:
    """Hold ``<root>/pve-mirror/lock`` for the duration of the block.

    Raises LockedError naming the holder if another process has it. A lock left by a
    dead process of this host is taken over; one held on another node is not. Raises
    FileSystemError naming the file if the file system refuses (e.g. no quorum).
    """
    base = root / "pve-mirror"
    lock_dir = base / "lock"
    me = Owner.me(command)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fs_error(exc, base, "create the directory") from exc
    _acquire(lock_dir, me)
    try:
        yield lock_dir
    except BaseException:
        # Keep the error that ended the block; a lock left behind is taken over later.
        with suppress(PveMirrorError):
            _release(lock_dir, me)
        raise
    _release(lock_dir, me)


def _acquire(lock_dir: Path, me: Owner) -> None:
    for _attempt in range(ATTEMPTS):
        try:
            lock_dir.mkdir()
        except FileExistsError:
            if _take_over(lock_dir, me):
                return
            continue
        except OSError as exc:
            raise fs_error(exc, lock_dir, "create the lock") from exc
        try:
            _write(lock_dir / OWNER, me)
        except OSError as exc:
            with suppress(OSError):
                lock_dir.rmdir()
            raise fs_error(exc, lock_dir / OWNER) from exc
        return
    raise LockedError(f"locked by {_holder_text(lock_dir)}: {lock_dir}")


def _take_over(lock_dir: Path, me: Owner) -> bool:
    """Take the existing lock if its owner is dead; give False to try again (a lost race).

    Raises LockedError if a live (or unknown) process holds it.
    """
    owner_path = lock_dir / OWNER
    owner = _read_owner(owner_path)
    if owner is None:
        if _restore_dead_claim(lock_dir):
            return False
        if not lock_dir.exists():
            return False  # released meanwhile
        raise LockedError(f"locked by {_holder_text(lock_dir)}: {lock_dir}")
    if not owner.dead_here():
        raise LockedError(f"locked by {owner.describe()}: {lock_dir}{_hint(owner)}")
    claim = lock_dir / f"{CLAIM}{me.host}-{me.pid}"
    try:
        os.rename(owner_path, claim)
    except FileNotFoundError:
        return False  # another taker was first, or the lock went away
    except OSError as exc:
        raise fs_error(exc, owner_path, "take over the lock") from exc
    try:
        if _read_owner(claim) != owner:
            # The lock changed hands after we looked: give it back untouched (unless its
            # holder has released it meanwhile, taking the claim with it).
            with suppress(FileNotFoundError):
                os.rename(claim, owner_path)
            return False
        _write(claim, me)
        os.rename(claim, owner_path)
    except FileNotFoundError:
        return _read_owner(owner_path) == me
    except OSError as exc:
        raise fs_error(exc, claim, "take over the lock") from exc
    log.warning("took over the lock of %s, which no longer runs", owner.describe())
    return True


def _restore_dead_claim(lock_dir: Path) -> bool:
    """Rename a dead taker's claim back to ``owner``; tell whether one was found."""
    prefix = f"{CLAIM}{socket.gethostname()}-"
    for name in _names(lock_dir):
        if not name.startswith(prefix) or not name[len(prefix) :].isdigit():
            continue
        if _alive(int(name[len(prefix) :])):
            continue
        with suppress(FileNotFoundError):
            os.rename(lock_dir / name, lock_dir / OWNER)
        return True
    return False


def _names(lock_dir: Path) -> list[str]:
    try:
        return sorted(os.listdir(lock_dir))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise fs_error(exc, lock_dir, "read") from exc


def _holder_text(lock_dir: Path) -> str:
    owner = _read_owner(lock_dir / OWNER)
    if owner is not None:
        return owner.describe()
    for name in _names(lock_dir):
        if name.startswith(CLAIM):
            return f"a process taking over a dead one's lock ({name})"
    return f"an unknown process (no owner file; remove {lock_dir} if no pve-mirror command runs)"


def _hint(owner: Owner) -> str:
    if owner.host == socket.gethostname():
        return ""
    return f" (if it no longer runs on {owner.host}, rerun the command there to take it over)"


def _release(lock_dir: Path, me: Owner) -> None:
    """Remove the lock if it is still ours; a taker's claim found inside goes with it.

    Raises FileSystemError if the file system refuses.
    """
    for _attempt in range(ATTEMPTS):
        owner = _read_owner(lock_dir / OWNER)
        if owner is not None and owner != me:
            log.warning("the lock %s belongs to %s now; left alone", lock_dir, owner.describe())
            return
        for name in _names(lock_dir):
            # owner (and owner.tmp of earlier versions), claims, our temporary files
            if name.startswith((OWNER, CLAIM, f".{OWNER}.", f".{CLAIM}")):
                try:
                    (lock_dir / name).unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise fs_error(exc, lock_dir / name, "remove the lock") from exc
        try:
            lock_dir.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            # A taker put the owner back while we cleaned up: go round once more.
            if exc.errno != errno.ENOTEMPTY:
                raise fs_error(exc, lock_dir, "remove the lock") from exc
    raise FileSystemError(
        "cannot remove the lock: the directory keeps files that are not the lock's", str(lock_dir)
    )


# --- inspecting and breaking the lock (``pve-mirror lock show|break``) -------------------


@dataclass(frozen=True)
class LockState:
    """The cluster lock as found: held or not, and by whom (None: no owner file)."""

    path: Path
    held: bool
    owner: Owner | None
    holder: str

    @property
    def live_here(self) -> bool:
        """Tell whether a running process of this host holds it."""
        owner = self.owner
        return owner is not None and owner.host == socket.gethostname() and _alive(owner.pid)

    def to_dict(self) -> dict[str, object]:
        """Give the data of ``pve-mirror lock show``."""
        owner = self.owner
        return {
            "path": str(self.path),
            "locked": self.held,
            "holder": self.holder if self.held else None,
            "command": owner.command if owner else None,
            "pid": owner.pid if owner else None,
            "host": owner.host if owner else None,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(owner.at)) if owner else None,
            "running_here": self.live_here
            if owner and owner.host == socket.gethostname()
            else None,
        }


def lock_state(root: Path) -> LockState:
    """Give who holds ``<root>/pve-mirror/lock``; raises FileSystemError if unreadable."""
    lock_dir = root / "pve-mirror" / "lock"
    if not lock_dir.is_dir():
        return LockState(lock_dir, False, None, "")
    owner = _read_owner(lock_dir / OWNER)
    return LockState(lock_dir, True, owner, _holder_text(lock_dir))


def break_lock(root: Path, *, yes: bool) -> LockState:
    """Remove the cluster lock; give the state it was in (``held`` False: there was none).

    Refuses (LockedError) a lock held by a running process of this host. A lock of
    another host, or one without an owner, needs ``yes`` (else PolicyError naming the
    holder): this host cannot tell whether that process still runs. A dead process of
    this host's lock goes without ``yes``. Raises LockedError if the lock changed hands
    meanwhile, FileSystemError if the file system refuses.
    """
    state = lock_state(root)
    if not state.held:
        return state
    owner = state.owner
    if state.live_here:
        assert owner is not None
        raise LockedError(
            f"locked by {owner.describe()}, which is running: wait for it to end "
            f"(or stop it), then retry; not broken: {state.path}"
        )
    here = owner is not None and owner.host == socket.gethostname()
    if not here and not yes:
        where = f" on {owner.host}" if owner else ""
        raise PolicyError(
            f"locked by {state.holder}: make sure it no longer runs{where}, "
            "then rerun with --yes to break the lock"
        )
    _release(state.path, owner or Owner("", 0, "", 0.0))
    after = _read_owner(state.path / OWNER) if state.path.is_dir() else None
    if after is not None and after != owner:
        raise LockedError(f"the lock changed hands meanwhile, not broken: now {after.describe()}")
    log.warning("broke the lock of %s", state.holder)
    return state
