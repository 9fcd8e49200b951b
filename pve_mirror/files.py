"""Writing a file so that a reader never sees half of it, and secrets are never readable.

pmxcfs, a node-exporter textfile reader and a crash all want the same thing: write a
temporary file in the same directory, flush it to disk, rename it over the target.
"""

from __future__ import annotations

import os
from pathlib import Path

from pve_mirror.errors import ConfigError


def write_atomic(path: Path, data: bytes, mode: int = 0o640, *, dir_mode: int = 0o755) -> None:
    """Write ``data`` to ``path`` atomically, created with ``mode`` (0600 for secrets).

    Missing parent directories are created with ``dir_mode``. A symlink at the
    temporary name is never followed. Raises ConfigError naming the file on failure.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    except OSError as exc:
        raise ConfigError(f"cannot create the directory: {exc.strerror}", str(path.parent)) from exc
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write: {exc.strerror}", str(path)) from exc
