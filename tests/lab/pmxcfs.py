"""The lab's ``/etc/pve``: a real pmxcfs instance per site, or a plain directory.

pmxcfs (Proxmox's cluster file system, built from pve-cluster's source by
``../shared/third-party/pmxcfs/build.sh``) runs in local mode, one instance per site,
mounted at ``<lab>/pmxcfs/<site>/etc-pve``; its database lives beside the mount and
survives a restart like a node reboot. It enforces what a plain directory hides:
fixed modes (0640, 0600 under ``priv/``), 1 MiB files, no symlinks, one VMID per
cluster, ENOTEMPTY when a non-empty directory is renamed.

Where ``../shared`` is absent (a user's plain clone) the lab says so in one line and
uses a plain directory at the same path; under CI (``CI=true``) that is an error, so
the suite never passes on the weaker stand-in by accident.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
THIRD_PARTY = REPO_ROOT.parent / "shared" / "third-party" / "pmxcfs"
BUILD_DIR = Path(os.environ.get("PMXCFS_BUILD_DIR", "/tmp/pmxcfs-build"))
BINARY = BUILD_DIR / "bin" / "pmxcfs"
START_TIMEOUT = 60.0
_notes_given: set[str] = set()


class PmxcfsError(RuntimeError):
    """pmxcfs cannot be built, started or stopped; the message says why."""


def available() -> bool:
    """Tell whether the pmxcfs sources and scripts are beside the repository."""
    return (THIRD_PARTY / "build.sh").is_file() and (THIRD_PARTY / "run.sh").is_file()


def under_ci() -> bool:
    """Tell whether this runs under CI (``CI`` set to true), where fallbacks fail."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _note_once(text: str) -> None:
    if text not in _notes_given:
        _notes_given.add(text)
        print(text, file=sys.stderr)


def ensure_built() -> Path:
    """Give the pmxcfs binary, building it first if needed (build.sh is idempotent).

    Raises PmxcfsError with the build's last lines when it fails.
    """
    env = dict(os.environ, PMXCFS_BUILD_DIR=str(BUILD_DIR))
    proc = subprocess.run(
        ["bash", str(THIRD_PARTY / "build.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0 or not BINARY.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise PmxcfsError(f"building pmxcfs failed (rc {proc.returncode}):\n{tail}")
    return BINARY


@dataclass
class PveFs:
    """One site's ``/etc/pve``: ``mount`` is the path to use as the config root."""

    base: Path
    node: str

    @property
    def mount(self) -> Path:
        """Give the mount point (or plain directory) that plays ``/etc/pve``."""
        return self.base / "etc-pve"

    @property
    def real(self) -> bool:
        """Tell whether a real pmxcfs serves the mount point right now."""
        return _is_mounted(self.mount)

    def _run(self, *args: str, timeout: float = START_TIMEOUT) -> str:
        env = dict(
            os.environ,
            PMXCFS_BIN=str(BINARY),
            PMXCFS_START_TIMEOUT=str(int(START_TIMEOUT)),
        )
        proc = subprocess.run(
            ["bash", str(THIRD_PARTY / "run.sh"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout + 15,
            check=False,
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
            raise PmxcfsError(f"pmxcfs {args[0]} for {self.base} failed: {tail}")
        return proc.stdout

    def start(self) -> Path:
        """Mount the site's pmxcfs (or make the plain directory); give the mount point.

        Does nothing when it already runs. Raises PmxcfsError when pmxcfs cannot be
        built or started, or when ``../shared`` is missing under CI.
        """
        if self.real:
            return self.mount
        if not available():
            why = f"pmxcfs sources not found at {THIRD_PARTY}"
            if under_ci():
                raise PmxcfsError(f"{why}; CI must run the lab on real pmxcfs")
            _note_once(f"lab: {why}; /etc/pve falls back to a plain directory")
            self.mount.mkdir(parents=True, exist_ok=True)
            for sub in ("priv", f"nodes/{self.node}/qemu-server", f"nodes/{self.node}/lxc"):
                (self.mount / sub).mkdir(parents=True, exist_ok=True)
            (self.mount / "priv").chmod(0o700)
            return self.mount
        ensure_built()
        self.base.mkdir(parents=True, exist_ok=True)
        self._run("start", str(self.base), self.node)
        return self.mount

    def stop(self) -> None:
        """Unmount and stop the site's pmxcfs (its database stays); no-op if not running."""
        if (available() and (self.base / "pid").exists()) or _is_mounted(self.mount):
            self._run("stop", str(self.base))

    def wipe(self) -> None:
        """Stop pmxcfs and delete its database and mount point (a fresh file system)."""
        self.stop()
        if _is_mounted(self.mount):
            raise PmxcfsError(f"{self.mount} is still mounted; not deleting {self.base}")
        shutil.rmtree(self.base, ignore_errors=True)


def _is_mounted(path: Path) -> bool:
    target = str(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            return any(line.split()[4] == target for line in handle)
    except OSError:
        return False


def wipe_all(lab_root: Path) -> None:
    """Stop and delete every site's pmxcfs under ``<lab_root>/pmxcfs``."""
    top = lab_root / "pmxcfs"
    if not top.is_dir():
        return
    for base in sorted(top.iterdir()):
        if base.is_dir():
            PveFs(base, node="unused").wipe()
    shutil.rmtree(top, ignore_errors=True)
