"""rsync over SSH to the peer site: argv builders (pure) and one run function.

The peer is reached as PVE admins set it up: ``ssh`` in ``BatchMode`` (never a
password prompt), with a bounded connect timeout, optionally a dedicated key
(``-i`` with ``IdentitiesOnly``) and a dedicated known-hosts file (then host keys
are checked strictly). rsync runs with flags that suit pmxcfs on the receiving
side, where any chmod to a mode other than 0640 (0600 under ``priv/``), any chown
and any symlink fails:

* no ``--perms``: with it the receiver ``fchmod``s each temporary file to 0600 at
  creation, which pmxcfs refuses (rsync exits 23, nothing is written);
* ``--chmod=D0755,F0640`` and the receiving rsync run under ``umask 022``: a new file
  then wants 0640 and a new directory 0755, exactly what pmxcfs gives, so rsync
  never chmods (without ``--perms`` the receiver's umask masks the wanted mode, and
  a root umask of 027 or 077 would make it chmod, and fail, on every new entry);
* no owner, group or links; checksums instead of size+mtime; no directory times;
  ``--delay-updates`` so the new files appear together at the end;
  ``--delete-after`` for guests no longer sent; ``--mkpath`` to create the staging path.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from pve_mirror import execute
from pve_mirror.errors import CommandError, ConfigError

RSYNC = "rsync"
SSH = "ssh"
CONNECT_TIMEOUT = 10
IO_TIMEOUT = 60
RUN_TIMEOUT = 300.0
# The peer's login shell runs this; the umask makes the modes rsync wants pmxcfs's own.
REMOTE_RSYNC = "umask 022 && rsync"

# Values that go into rsync's -e string must not need quoting beyond spaces.
_SAFE_TOKEN = re.compile(r"[^'\"\\\n\r\t\0]+")
_REMOTE_PATH = re.compile(r"/[A-Za-z0-9_.,+@=/\-]*")


@dataclass(frozen=True)
class SshOptions:
    """How to reach the peer over SSH; paths only, never a key itself.

    ``known_hosts`` set means: use only that file and refuse unknown host keys.
    Without it, the admin's own ssh configuration decides.
    """

    target: str
    port: int = 22
    identity: Path | None = None
    known_hosts: Path | None = None
    connect_timeout: int = CONNECT_TIMEOUT

    def host(self) -> str:
        """Give the host part of the target (without ``user@``)."""
        return self.target.rpartition("@")[2]


def ssh_argv(options: SshOptions) -> list[str]:
    """Give the ssh command (without the target) rsync uses to reach the peer.

    Raises ConfigError if a path holds a character rsync's ``-e`` cannot carry.
    """
    argv = [
        SSH,
        "-p",
        str(options.port),
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={options.connect_timeout}",
    ]
    if options.identity is not None:
        argv += ["-i", _checked(str(options.identity)), "-o", "IdentitiesOnly=yes"]
    if options.known_hosts is not None:
        argv += [
            "-o",
            f"UserKnownHostsFile={_checked(str(options.known_hosts))}",
            "-o",
            "StrictHostKeyChecking=yes",
        ]
    return argv


def _checked(value: str) -> str:
    if not _SAFE_TOKEN.fullmatch(value):
        raise ConfigError(f"path {value!r} cannot be passed to ssh through rsync (quotes?)")
    return value


def remote_spec(options: SshOptions, path: str) -> str:
    """Give rsync's ``[user@]host:path`` for ``path`` on the peer (IPv6 in brackets).

    Raises ConfigError for a path that is not absolute or holds unusual characters.
    """
    if not _REMOTE_PATH.fullmatch(path) or "/../" in f"{path}/":
        raise ConfigError(f"invalid remote path {path!r}")
    user, at, host = options.target.rpartition("@")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{user}{at}{host}:{path}"


def push_argv(
    source_dir: Path,
    options: SshOptions,
    remote_dir: str,
    *,
    delete: bool = True,
    dry_run: bool = False,
) -> list[str]:
    """Give the rsync command that makes ``remote_dir`` on the peer a copy of ``source_dir``.

    With ``delete`` files that are no longer in ``source_dir`` are removed there (the
    directory must be ours alone). Links are never sent; ownership and modes are never
    set (files arrive 0640, directories 0755: what pmxcfs allows).
    """
    argv = [
        RSYNC,
        "--recursive",
        "--checksum",
        "--times",
        "--omit-dir-times",
        "--chmod=D0755,F0640",
        f"--rsync-path={REMOTE_RSYNC}",
        "--no-links",
        "--no-owner",
        "--no-group",
        "--mkpath",
        "--delay-updates",
        f"--timeout={IO_TIMEOUT}",
        "--itemize-changes",
        "-e",
        " ".join(_quote_for_rsync(a) for a in ssh_argv(options)),
    ]
    if delete:
        argv.append("--delete-after")
    if dry_run:
        argv.append("--dry-run")
    # The trailing slashes copy the directory's content, not the directory itself.
    argv += [f"{source_dir}/", remote_spec(options, remote_dir.rstrip("/") + "/")]
    return argv


def _quote_for_rsync(arg: str) -> str:
    """Quote one argument of rsync's ``-e`` string (rsync splits it on spaces)."""
    return f"'{arg}'" if " " in arg else arg


def display(argv: list[str]) -> str:
    """Give ``argv`` as a shell-pasteable line (for dry runs and messages)."""
    return shlex.join(argv)


def run(argv: list[str], timeout: float = RUN_TIMEOUT) -> execute.Completed:
    """Run an rsync command; give what it printed.

    Raises CommandError if it fails, carrying ssh's own message when the connection
    failed (rsync's last line only says "unexplained error" then).
    """
    try:
        return execute.run(argv, timeout=timeout)
    except CommandError as exc:
        raise CommandError(exc.argv, exc.returncode, explain(exc.stderr, exc.returncode)) from exc


_SSH_HINTS = ("ssh:", "Permission denied", "Host key verification failed", "REMOTE HOST")


# rsync(1), EXIT VALUES: the meaning of the codes a sync can meet.
_EXIT_MEANINGS = {
    3: "errors selecting input/output files or directories",
    5: "error starting the client-server protocol",
    10: "error in socket I/O",
    11: "error in file I/O",
    12: "error in the rsync protocol data stream",
    23: "partial transfer due to an error",
    24: "partial transfer: source files vanished",
    30: "timeout in data send/receive",
    255: "ssh failed",
}


def explain(stderr: str, returncode: int | None = None) -> str:
    """Give the most telling line of a failed rsync's stderr.

    That is ssh's reason if the connection failed, else rsync's first specific
    complaint (``rsync: [receiver] mkstemp "…" failed: Permission denied (13)`` names
    the file and the cause; the summary line after it does not), else its last line.
    When the peer's rsync exits before its messages reach us, stderr is empty: then
    the meaning of ``returncode`` and where to look.
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines and returncode in _EXIT_MEANINGS:
        return (
            f"rsync code {returncode}: {_EXIT_MEANINGS[returncode]}, no reason printed "
            "(a peer /etc/pve without quorum is read-only)"
        )
    for line in lines:
        if any(hint in line for hint in _SSH_HINTS):
            return line
    for line in lines:
        if line.startswith("rsync: ") and "connection unexpectedly closed" not in line:
            return line
    return lines[-1] if lines else ""


def changed_files(stdout: str) -> list[str]:
    """Give the paths rsync's ``--itemize-changes`` output reports as sent or deleted."""
    out = []
    for line in stdout.splitlines():
        code, _, name = line.partition(" ")
        if not name:
            continue
        name = name.strip()
        if name.endswith("/"):
            continue
        if code.startswith("*deleting") or code[:1] in ("<", ">", "c"):
            out.append(name)
    return out
