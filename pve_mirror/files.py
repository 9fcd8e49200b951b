"""Files under ``/etc/pve``: atomic writes, and one clear error for every refusal.

pmxcfs, a node-exporter textfile reader and a crash all want the same thing: write a
temporary file in the same directory, flush it to disk, rename it over the target.

pmxcfs (the FUSE file system behind ``/etc/pve``) refuses more than a plain
directory: every write without quorum (EACCES), files past 1 MiB (EFBIG), any mode
but 0640 (0600 under ``priv/``) and hard links (EPERM), symlinks (ENOSYS), a second
``<vmid>.conf`` anywhere in the cluster (EEXIST). :func:`fs_error` turns each such
OSError into a one-line :class:`FileSystemError` that names the file and the cause.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

from pve_mirror.errors import FileSystemError

# pmxcfs answers a write past this size with EFBIG.
PMXCFS_MAX_FILE = 1024 * 1024
_GUEST_CONFIG = re.compile(r"([1-9]\d{2,8})\.conf")


def fs_error(
    exc: OSError, path: Path | str | None = None, action: str = "write"
) -> FileSystemError:
    """Give the one-line error for ``exc`` raised while trying to ``action`` ``path``.

    ``path`` defaults to the file the OSError names. The cause is worded for pmxcfs when
    the file lives on a FUSE file system (as ``/etc/pve`` does).
    """
    where = str(path) if path is not None else (str(exc.filename) if exc.filename else None)
    cause = _cause(exc, where)
    return FileSystemError(f"cannot {action}: {cause}", where, exc.errno)


def _cause(exc: OSError, where: str | None) -> str:
    code = exc.errno
    text = (exc.strerror or str(exc) or "error").lower()
    pmxcfs = where is not None and (
        where == "/etc/pve" or where.startswith("/etc/pve/") or _on_fuse(where)
    )
    if code == errno.EROFS:
        return "read-only file system"
    if code == errno.EFBIG:
        return "file too large (pmxcfs holds at most 1 MiB per file)"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the file system"
    if code == errno.ENOTCONN:
        return "file system not connected (is pmxcfs, the pve-cluster service, running?)"
    if not pmxcfs:
        return text
    if code == errno.EACCES:
        return (
            "permission denied (pmxcfs is read-only while this node has no quorum; "
            "see 'pvecm status')"
        )
    if code == errno.EPERM:
        return (
            "operation not permitted (pmxcfs allows only mode 0640, 0600 under priv/, "
            "and no hard links or other owners)"
        )
    if code == errno.ENOSYS:
        return "not supported by pmxcfs (no symlinks, fifos or device files)"
    if code == errno.EEXIST:
        names = [str(exc.filename2 or ""), str(exc.filename or ""), where or ""]
        for name in names:
            match = _GUEST_CONFIG.fullmatch(os.path.basename(name))
            if match:
                return f"VMID {match.group(1)} already exists in the cluster (pmxcfs allows one)"
    return text


def _on_fuse(path: str) -> bool:
    """Tell whether ``path`` lies on a FUSE file system (pmxcfs is one), per mountinfo."""
    target = os.path.abspath(path)
    best, fstype = "", ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            for line in handle:
                fields = line.split()
                if "-" not in fields:
                    continue
                dash = fields.index("-")
                point = _unescape(fields[4])
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best) and dash + 1 < len(fields):
                    best, fstype = point, fields[dash + 1]
    except OSError:
        return False
    return fstype == "fuse" or fstype.startswith("fuse.")


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def write_atomic(path: Path, data: bytes, mode: int = 0o640, *, dir_mode: int = 0o755) -> None:
    """Write ``data`` to ``path`` atomically, created with ``mode`` (0600 for secrets).

    Missing parent directories are created with ``dir_mode``. A symlink at the
    temporary name is never followed. pmxcfs ignores the requested mode (0640, or
    0600 under ``priv/``); if the file ends up readable by more than ``mode`` allows
    (a secret outside ``priv/``) nothing is written. Raises FileSystemError naming
    the file and the cause on failure.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    except OSError as exc:
        raise fs_error(exc, path.parent, "create the directory") from exc
    # A per-call random part: threads of one process may write the same file.
    import secrets  # here: it loads hashlib and hmac, which a read-only hook never needs

    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as out:
            granted = stat.S_IMODE(os.fstat(out.fileno()).st_mode)
            if granted & ~mode & 0o077:
                raise FileSystemError(
                    f"cannot write it with mode {mode:04o}: the file system gives "
                    f"{granted:04o} (on /etc/pve, private files belong under priv/)",
                    str(path),
                )
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise fs_error(exc, path) from exc
    except FileSystemError:
        tmp.unlink(missing_ok=True)
        raise
