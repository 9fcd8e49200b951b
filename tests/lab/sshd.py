"""A loopback sshd for the lab: the "peer node" that ``pve-mirror sync`` rsyncs to.

``start(lab_dir)`` generates, under ``lab_dir`` (created 0700): a host key, a client
key pair, an authorized_keys file holding the client key, a known_hosts file for the
client and an ``sshd_config`` (127.0.0.1 on a free port, keys only, root with
``prohibit-password``, no PAM, ``StrictModes no`` because the lab dir lives under
/tmp), then runs ``/usr/sbin/sshd -D -e -f <config>`` and waits until it accepts
connections. The PID is recorded in ``lab_dir/sshd.pid``; ``stop(lab_dir)`` signals
only that PID and only if its command line names our config.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.lab.wait import wait_until

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
PRIVSEP_DIR = Path("/run/sshd")
START_TIMEOUT = 20.0

_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class SshEndpoint:
    """How a client reaches the lab sshd (the key is a file; never print it)."""

    host: str
    port: int
    user: str
    key_path: Path
    known_hosts: Path

    @property
    def target(self) -> str:
        """Give ``user@host``."""
        return f"{self.user}@{self.host}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path, comment: str) -> None:
    if path.exists():
        return
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


def _config_path(lab_dir: Path) -> Path:
    return lab_dir / "sshd_config"


def _pid_file(lab_dir: Path) -> Path:
    return lab_dir / "sshd.pid"


def _is_ours(pid: int, lab_dir: Path) -> bool:
    """Tell whether ``pid`` is a live sshd started with our config (sshd rewrites its
    title, so the whole command line is searched)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, IndexError):
        return False
    return "sshd" in cmd and str(_config_path(lab_dir)) in cmd


def running_pid(lab_dir: Path) -> int | None:
    """Give the PID of the lab sshd under ``lab_dir`` while it runs."""
    try:
        pid = int(_pid_file(lab_dir).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_ours(pid, lab_dir) else None


def start(lab_dir: Path) -> SshEndpoint:
    """Start (or find running) the lab sshd under ``lab_dir``; give its endpoint.

    Raises RuntimeError with the log tail if sshd exits, WaitTimeoutError if it does
    not accept connections in time.
    """
    lab_dir = lab_dir.resolve()
    lab_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.chmod(0o700)
    PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    host_key = lab_dir / "ssh_host_ed25519_key"
    client_key = lab_dir / "client_ed25519"
    _keygen(host_key, "pve-mirror-lab-host")
    _keygen(client_key, "pve-mirror-lab-client")
    authorized = lab_dir / "authorized_keys"
    authorized.write_text((client_key.with_suffix(".pub")).read_text())
    authorized.chmod(0o600)
    user = getpass.getuser()
    port_file = lab_dir / "sshd.port"
    endpoint_port = int(port_file.read_text()) if port_file.exists() else 0
    pid = running_pid(lab_dir)
    if pid is None:
        endpoint_port = _free_port()
        port_file.write_text(f"{endpoint_port}\n")
        _config_path(lab_dir).write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {endpoint_port}",
                    f"HostKey {host_key}",
                    f"PidFile {_pid_file(lab_dir)}",
                    f"AuthorizedKeysFile {authorized}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "X11Forwarding no",
                    "AllowTcpForwarding no",
                    "PrintMotd no",
                    f"AllowUsers {user}",
                    "LogLevel INFO",
                    "",
                ]
            )
        )
        log = (lab_dir / "sshd.log").open("ab")
        with log:
            proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(_config_path(lab_dir))],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=dict(os.environ, LC_ALL="C"),
            )
        _children[proc.pid] = proc
        _pid_file(lab_dir).write_text(f"{proc.pid}\n")

        def listening() -> bool:
            code = proc.poll()
            if code is not None:
                tail = (lab_dir / "sshd.log").read_text(errors="replace").splitlines()[-5:]
                raise RuntimeError(f"sshd exited with status {code}: " + " | ".join(tail))
            with socket.socket() as sock:
                sock.settimeout(0.5)
                return sock.connect_ex(("127.0.0.1", endpoint_port)) == 0

        wait_until(listening, timeout=START_TIMEOUT, what="the lab sshd to listen")
    known_hosts = lab_dir / "known_hosts"
    host_pub = host_key.with_suffix(".pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{endpoint_port} {host_pub[0]} {host_pub[1]}\n")
    return SshEndpoint("127.0.0.1", endpoint_port, user, client_key, known_hosts)


def stop(lab_dir: Path, timeout: float = 10.0) -> None:
    """Stop the lab sshd under ``lab_dir`` (SIGTERM, then SIGKILL); a no-op if it is not running."""
    lab_dir = lab_dir.resolve()
    pid = running_pid(lab_dir)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    try:
        wait_until(lambda: not _is_ours(pid, lab_dir), timeout=timeout, what="sshd to exit")
    except AssertionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _is_ours(pid, lab_dir), timeout=timeout, what="sshd to die")
    child = _children.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1.0)
    _pid_file(lab_dir).unlink(missing_ok=True)
