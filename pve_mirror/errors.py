"""The one exception hierarchy of pve-mirror.

Every error a user can cause or meet derives from :class:`PveMirrorError`; the CLI
catches it at the top, prints ``str(error)`` as one line and exits with
``error.exit_code``. Anything else is a bug and gets a traceback only with ``--debug``.
"""

from __future__ import annotations


class PveMirrorError(Exception):
    """Base class: a message fit for one line on stderr, and an exit code."""

    exit_code = 1


class UsageError(PveMirrorError):
    """The command line is wrong (exit 2, like argparse)."""

    exit_code = 2


class ConfigError(PveMirrorError):
    """A configuration file cannot be used; names the file and, when known, the line."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        self.message = message
        self.path = path
        self.line = line
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.path is None:
            return self.message
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.message}"


class FileSystemError(ConfigError):
    """A file could not be read or written: the file system refused (read-only without
    quorum, full, file too large, a mode or link pmxcfs does not allow).

    Names the file and the cause; ``errno`` is the refusing system call's error number.
    """

    def __init__(self, message: str, path: str | None = None, errno: int | None = None) -> None:
        self.errno = errno
        super().__init__(message, path)


class NotFoundError(PveMirrorError):
    """A guest, storage, image or site named by the user does not exist."""

    exit_code = 3


class PolicyError(PveMirrorError):
    """A request is refused because it is unsafe or unsupported (e.g. journal mode on krbd)."""

    exit_code = 4


class CommandError(PveMirrorError):
    """An external command failed; carries its argv, exit status and the tail of its stderr."""

    def __init__(self, argv: list[str], returncode: int | None, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        status = "timed out" if returncode is None else f"exited {returncode}"
        detail = f": {tail}" if tail else ""
        super().__init__(f"{argv[0]} {status}{detail}")


class CephError(PveMirrorError):
    """A librados/librbd call failed in a way the user must act on."""

    exit_code = 5


class PveApiError(PveMirrorError):
    """The PVE API (local or peer) refused or failed a request."""

    exit_code = 6


class LockedError(PveMirrorError):
    """Another pve-mirror operation holds the cluster-wide lock."""

    exit_code = 7


def listing(items: list[str], most: int = 10, sep: str = " | ") -> str:
    """Give ``items`` joined for a one-line message: the first ``most``, then how many
    more (a refusal of 300 guests stays readable)."""
    shown = sep.join(items[:most])
    return shown + (f"{sep}and {len(items) - most} more" if len(items) > most else "")
