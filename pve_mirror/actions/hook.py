"""The guest hookscript: what it checks at each phase, and ``pve-mirror hook install``.

PVE runs a guest's hookscript as ``<script> <vmid> <phase>``; only a failing
``pre-start`` stops the start. pve-mirror's hook:

- ``pre-start``: refuses (exit 1, one line on stderr) when a mirrored RBD disk of the
  guest's current config is not primary at this site, so a guest never starts on a
  copy it cannot write; it also refuses when the mirroring state cannot be read
  (fail closed), and when the peer's copy is primary too (after a forced failover the
  returning site still believes it is primary). A disk whose image is not mirrored at
  all is fine.
- ``post-stop``: takes a mirror snapshot of each snapshot-mode disk that is primary
  here, so the guest's final state replicates (a failure is only a warning).
- other phases: nothing.

A hookscript the guest had before is chained, not replaced: its volume ID is kept in
``<root>/pve-mirror/hooks/<vmid>.chain`` and it runs first with the same arguments
(if it fails at pre-start, the start is refused).

This module is on the hook's start path: it imports only the config readers and the
Ceph adapters, nothing of the API clients.
"""

from __future__ import annotations

import re
from pathlib import Path

from pve_mirror.actions.hook_check import (
    HookOutcome,
    cluster_groups,
    find_guest,
    post_stop,
    pre_start,
    started_disks,
)
from pve_mirror.errors import ConfigError, PveMirrorError
from pve_mirror.pve.root import ConfigRoot
from pve_mirror.pve.storage import StorageConfig

__all__ = ["HookOutcome", "cluster_groups", "find_guest", "run_hook", "started_disks"]

# The engine (threads, journal) and subprocess handling are imported where they are
# used: a guest start pays for neither unless a hookscript is chained.

HOOK_NAME = "pve-mirror-hook"
PHASES = ("pre-start", "post-start", "pre-stop", "post-stop")
CHAIN_DIR = Path("pve-mirror") / "hooks"
PYTHON = "/usr/bin/python3"
HOOK_MODULE = "pve_mirror.hookscript"
# What the snippet runs: the hookscript's main, with the snippet's arguments.
BOOTSTRAP = f"from {HOOK_MODULE} import run; run()"
DEFAULT_ROOT = "/etc/pve"
CONNECT_TIMEOUT = 10.0
# A peer that does not answer within this is taken as down (its outage is the disaster).
PEER_TIMEOUT = 3.0
CHAIN_TIMEOUT = 600.0
CONFIG_MODE = 0o640
# Where Debian's python3 finds packages without help.
_SYSTEM_PATHS = ("/usr/lib/python3/", "/usr/local/lib/python3")
# Where Debian installs python3 packages: python3-rados, python3-rbd, pve-mirror.
DIST_PACKAGES = "/usr/lib/python3/dist-packages"
_VMID = re.compile(r"[1-9]\d{2,8}", re.ASCII)
_SNIPPET_VOLID = re.compile(r"([a-z][a-z0-9\-_.]*[a-z0-9]):snippets/([^/\s]+)", re.ASCII)


# --- the snippet -----------------------------------------------------------------------


def snippet_text(root: str | None = None, pythonpath: str | None = None) -> str:
    """Give the hookscript's text.

    Without ``root`` it reads ``$PVE_MIRROR_ROOT`` (default /etc/pve): the packaged
    ``hooks/pve-mirror-hook``. ``hook install`` pins the root it installs for, and
    puts ``pythonpath`` (where pve_mirror is when Debian's python3 would not find it)
    before Debian's package directory on ``PYTHONPATH``.
    """
    import shlex  # here, not at the top: a guest start never writes a snippet

    lines = [
        "#!/bin/sh",
        "# pve-mirror guest hookscript. PVE runs it as: <script> <vmid> <phase>.",
        "# pre-start refuses to start a guest whose mirrored RBD disks are not primary",
        "# at this site; post-stop takes a mirror snapshot. Installed and chained by",
        "# 'pve-mirror hook install'; do not edit a copy in snippets/, rerun that.",
    ]
    if root is None:
        lines.append(f'PVE_MIRROR_ROOT="${{PVE_MIRROR_ROOT:-{DEFAULT_ROOT}}}"')
    else:
        lines.append(f"PVE_MIRROR_ROOT={shlex.quote(root)}")
    lines.append("export PVE_MIRROR_ROOT")
    path = f"{pythonpath}:{DIST_PACKAGES}" if pythonpath is not None else DIST_PACKAGES
    lines += [
        f"PYTHONPATH={shlex.quote(path)}",
        "export PYTHONPATH",
        "# -S: without the site module (its .pth files cost a start more than the check",
        "# itself); the Debian packages' directory is on PYTHONPATH instead. -c, not -m:",
        "# runpy is not loaded either.",
        f'exec {PYTHON} -S -c {shlex.quote(BOOTSTRAP)} "$@"',
    ]
    return "\n".join(lines) + "\n"


def package_pythonpath() -> str | None:
    """Give the directory holding pve_mirror if Debian's python3 would not find it, else None."""
    import pve_mirror

    base = Path(pve_mirror.__file__).resolve().parent.parent
    if any(str(base).startswith(p) for p in _SYSTEM_PATHS):
        return None
    return str(base)


def hook_volid(storeid: str) -> str:
    """Give the hookscript volume ID on storage ``storeid``."""
    return f"{storeid}:snippets/{HOOK_NAME}"


def chain_file(root: Path, vmid: int) -> Path:
    """Give the file that names the hookscript chained before ours for ``vmid``."""
    return root / CHAIN_DIR / f"{vmid}.chain"


def snippet_path(storages: StorageConfig, volid: str) -> Path:
    """Give the file of a ``<storage>:snippets/<file>`` volume.

    Raises ConfigError if the volume is not a snippet or its storage has no path.
    """
    m = _SNIPPET_VOLID.fullmatch(volid)
    if not m:
        raise ConfigError(f"'{volid}' is not a snippets volume (<storage>:snippets/<file>)")
    storage = storages.get(m.group(1))
    if storage is None:
        raise ConfigError(f"storage '{m.group(1)}' of hookscript {volid} does not exist")
    base = storage.options.get("path")
    if not base:
        raise ConfigError(f"storage '{m.group(1)}' has no path for snippets")
    return Path(base) / "snippets" / m.group(2)


# --- running the hook ------------------------------------------------------------------


def run_hook(root: Path, vmid_text: str, phase: str, *, exiting: bool = False) -> HookOutcome:
    """Run the hook for one guest and phase; give its exit code and lines.

    ``exiting``: the process ends right after, so the pre-start check leaves its
    cluster connections to the process exit instead of shutting them down. Never
    raises a PveMirrorError: at pre-start every error refuses the start (fail closed),
    at other phases it is a warning.
    """
    outcome = HookOutcome()
    if not _VMID.fullmatch(vmid_text):
        outcome.exit_code = 2
        outcome.errors.append(f"invalid VMID {vmid_text!r}")
        return outcome
    vmid = int(vmid_text)
    if phase not in PHASES:
        return outcome
    try:
        _run_chained(root, vmid, phase, outcome)
        if outcome.exit_code:
            return outcome
        if phase == "pre-start":
            pre_start(root, vmid, outcome, CONNECT_TIMEOUT, PEER_TIMEOUT, close=not exiting)
        elif phase == "post-stop":
            post_stop(root, vmid, outcome, CONNECT_TIMEOUT)
    except PveMirrorError as exc:
        if phase == "pre-start":
            outcome.exit_code = 1
            outcome.errors.append(
                f"VMID {vmid}: refusing to start, cannot check mirroring (fail closed): {exc}"
            )
        else:
            outcome.errors.append(f"warning: VMID {vmid} {phase}: {exc}")
    return outcome


def _run_chained(root: Path, vmid: int, phase: str, outcome: HookOutcome) -> None:
    path = chain_file(root, vmid)
    try:
        volid = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", str(path)) from exc
    from pve_mirror import execute

    storages = ConfigRoot(root).storage_config()
    script = snippet_path(storages, volid)
    done = execute.run([str(script), str(vmid), phase], timeout=CHAIN_TIMEOUT, check=False)
    outcome.output += done.stdout.splitlines()
    outcome.chained_stderr += done.stderr.splitlines()
    if done.returncode != 0:
        message = f"chained hookscript {volid} failed on {phase} (exit {done.returncode})"
        if phase == "pre-start":
            outcome.exit_code = 1
            outcome.errors.append(f"VMID {vmid}: refusing to start: {message}")
        else:
            outcome.errors.append(f"warning: VMID {vmid}: {message}")
