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

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pve_mirror.ceph.access import ClusterAccess
from pve_mirror.ceph.cluster import connected
from pve_mirror.ceph.mirror import SNAPSHOT, create_snapshot, mirror_info
from pve_mirror.errors import ConfigError, NotFoundError, PveMirrorError
from pve_mirror.pve.disks import GuestDisk, resolve_guest_disks
from pve_mirror.pve.guestconfig import GuestConfig
from pve_mirror.pve.root import CONFIG_DIRS, ConfigRoot, GuestRef, GuestType
from pve_mirror.pve.storage import RbdStorage, StorageConfig

if TYPE_CHECKING:
    pass

# The engine (threads, journal) and subprocess handling are imported where they are
# used: a guest start pays for neither unless a hookscript is chained.

HOOK_NAME = "pve-mirror-hook"
PHASES = ("pre-start", "post-start", "pre-stop", "post-stop")
CHAIN_DIR = Path("pve-mirror") / "hooks"
PYTHON = "/usr/bin/python3"
HOOK_MODULE = "pve_mirror.hookscript"
DEFAULT_ROOT = "/etc/pve"
CONNECT_TIMEOUT = 10.0
# A peer that does not answer within this is taken as down (its outage is the disaster).
PEER_TIMEOUT = 3.0
CHAIN_TIMEOUT = 600.0
CONFIG_MODE = 0o640
# Where Debian's python3 finds packages without help.
_SYSTEM_PATHS = ("/usr/lib/python3/", "/usr/local/lib/python3")
_VMID = re.compile(r"[1-9]\d{2,8}", re.ASCII)
_SNIPPET_VOLID = re.compile(r"([a-z][a-z0-9\-_.]*[a-z0-9]):snippets/([^/\s]+)", re.ASCII)
# Roles whose image a start does not write: detached disks and a snapshot's RAM state.
_IDLE_ROLES = ("unused", "vmstate")


# --- the snippet -----------------------------------------------------------------------


def snippet_text(root: str | None = None, pythonpath: str | None = None) -> str:
    """Give the hookscript's text.

    Without ``root`` it reads ``$PVE_MIRROR_ROOT`` (default /etc/pve): the packaged
    ``hooks/pve-mirror-hook``. ``hook install`` pins the root it installs for, and
    adds ``PYTHONPATH`` when pve_mirror is not where Debian's python3 looks.
    """
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
    if pythonpath is not None:
        lines += [f"PYTHONPATH={shlex.quote(pythonpath)}", "export PYTHONPATH"]
    lines.append(f'exec {PYTHON} -m {HOOK_MODULE} "$@"')
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


@dataclass
class HookOutcome:
    """What the hook prints and its exit code."""

    exit_code: int = 0
    output: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # The chained hookscript's own stderr, passed on as it is.
    chained_stderr: list[str] = field(default_factory=list)


def run_hook(root: Path, vmid_text: str, phase: str) -> HookOutcome:
    """Run the hook for one guest and phase; give its exit code and lines.

    Never raises a PveMirrorError: at pre-start every error refuses the start (fail
    closed), at other phases it is a warning.
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
            _pre_start(root, vmid, outcome)
        elif phase == "post-stop":
            _post_stop(root, vmid, outcome)
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


def find_guest(root: Path, vmid: int) -> GuestRef:
    """Give the guest ``vmid`` by looking only at its own file names on each node.

    Raises NotFoundError if no node has it.
    """
    nodes = root / "nodes"
    try:
        names = sorted(os.listdir(nodes))
    except OSError as exc:
        raise NotFoundError(f"{root} is not a PVE config root (no nodes/ directory)") from exc
    kinds: tuple[GuestType, ...] = ("qemu", "lxc")
    for node in names:
        for kind in kinds:
            path = nodes / node / CONFIG_DIRS[kind] / f"{vmid}.conf"
            if path.is_file():
                return GuestRef(vmid, kind, node, path)
    raise NotFoundError(f"no guest {vmid} in {root}/nodes (is PVE_MIRROR_ROOT right?)")


def started_disks(root: Path, vmid: int) -> tuple[GuestRef, list[GuestDisk], StorageConfig]:
    """Give the guest and the RBD disks a start uses (current and pending, not unused/vmstate).

    Raises NotFoundError/ConfigError when the guest or a disk cannot be resolved.
    """
    config_root = ConfigRoot(root)
    ref = find_guest(root, vmid)
    config = config_root.read_guest(ref)
    storages = config_root.storage_config()
    disks = [
        d
        for d in resolve_guest_disks(ref, _current_only(config), storages, strict=True)
        if d.mirrorable and d.spec is not None and d.role not in _IDLE_ROLES
    ]
    return ref, disks, storages


def _current_only(config: GuestConfig) -> GuestConfig:
    """Give the config without its snapshots: the current one and the pending changes
    (a VM start applies them)."""
    sections = [config.main]
    if config.pending is not None:
        sections.append(config.pending)
    return GuestConfig(config.kind, config.path, sections, list(config.errors))


def cluster_groups(
    disks: list[GuestDisk], storages: StorageConfig, root: Path
) -> list[tuple[ClusterAccess, list[GuestDisk]]]:
    """Group disks by Ceph cluster (same monitors or conf, same user): one connection each."""
    groups: dict[tuple[str, str], tuple[ClusterAccess, list[GuestDisk]]] = {}
    for disk in disks:
        storage = storages.get(disk.storage or "")
        if not isinstance(storage, RbdStorage):
            continue
        connection = storage.connection(root)
        key = (connection.mon_host or str(connection.conf_file), connection.client_id)
        if key not in groups:
            access = connection.access(storage.storeid).with_mount_timeout(CONNECT_TIMEOUT)
            groups[key] = (access, [])
        groups[key][1].append(disk)
    return list(groups.values())


def _pre_start(root: Path, vmid: int, outcome: HookOutcome) -> None:
    ref, disks, storages = started_disks(root, vmid)
    blocked: list[str] = []
    primary_here: list[GuestDisk] = []
    for access, group in cluster_groups(disks, storages, root):
        with connected(access, CONNECT_TIMEOUT) as cluster:
            for disk in group:
                assert disk.spec is not None
                info = mirror_info(cluster, disk.spec)
                if info.state != "disabled" and not info.primary:
                    blocked.append(f"{disk.key} ({disk.spec})")
                elif info.state != "disabled":
                    primary_here.append(disk)
    if blocked:
        outcome.exit_code = 1
        disks_text = ", ".join(blocked)
        outcome.errors.append(
            f"{ref.label}: refusing to start: mirrored disk {disks_text} is not primary "
            "at this site (fail over with 'pve-mirror failover' first, or start it on the "
            "primary site)"
        )
        return
    if primary_here:
        _check_peer_not_primary(root, ref, primary_here, outcome)


def _check_peer_not_primary(
    root: Path, ref: GuestRef, disks: list[GuestDisk], outcome: HookOutcome
) -> None:
    """Refuse when the peer's copy is primary too (this site was failed away from by force).

    A peer that does not answer cannot be asked: the start goes on with a warning, as
    the peer being down is when this site must be able to start its guests.
    """
    from pve_mirror.pve.siteconfig import load_site_config

    try:
        peer = load_site_config(root, required=True).peer()
        access = peer.ceph_access(root)
    except PveMirrorError:
        return  # no peer configured: nothing to compare with
    if (root / "pve-mirror" / f"fence-{peer.name}.json").exists():
        return  # a forced failover recorded the peer as lost and to be fenced
    access = access.with_mount_timeout(PEER_TIMEOUT)
    both = []
    try:
        with connected(access, PEER_TIMEOUT) as cluster:
            for disk in disks:
                assert disk.spec is not None
                try:
                    info = mirror_info(cluster, disk.spec)
                except NotFoundError:
                    continue
                if info.state != "disabled" and info.primary:
                    both.append(f"{disk.key} ({disk.spec})")
    except PveMirrorError:
        outcome.output.append(
            f"warning: {ref.label}: peer site {peer.name} does not answer; "
            "cannot rule out that it runs this guest"
        )
        return
    if both:
        outcome.exit_code = 1
        outcome.errors.append(
            f"{ref.label}: refusing to start: disk {', '.join(both)} is primary at "
            f"{peer.name} too (a forced failover moved the guest there); run "
            "'pve-mirror failback' on this site"
        )


def _post_stop(root: Path, vmid: int, outcome: HookOutcome) -> None:
    ref, disks, storages = started_disks(root, vmid)
    for access, group in cluster_groups(disks, storages, root):
        try:
            with connected(access, CONNECT_TIMEOUT) as cluster:
                for disk in group:
                    assert disk.spec is not None
                    try:
                        info = mirror_info(cluster, disk.spec)
                        if info.state == "enabled" and info.mode == SNAPSHOT and info.primary:
                            snap_id = create_snapshot(cluster, disk.spec)
                            outcome.output.append(
                                f"pve-mirror: {ref.label} {disk.key}: mirror snapshot "
                                f"{snap_id} of {disk.spec}"
                            )
                    except PveMirrorError as exc:
                        outcome.errors.append(f"warning: {ref.label} {disk.key}: {exc}")
        except PveMirrorError as exc:
            outcome.errors.append(f"warning: {ref.label}: {exc}")
