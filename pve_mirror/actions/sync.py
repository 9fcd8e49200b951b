"""``pve-mirror sync``: push the configs of the mirrored guests to the peer's staging area.

The enabled ``guest:`` entries of ``pve-mirror.cfg`` are looked up on every node of
this cluster; each config is copied byte for byte into a private temporary directory
as ``qemu-server/<vmid>.conf`` or ``lxc/<vmid>.conf`` next to a ``manifest.json``
(per file: VMID, type, source node, sha256, mtime, sync time; plus this site's
storage map), and that directory is rsynced over SSH to
``<peer root>/pve-mirror/staging/<this site>/`` with ``--delete``: the staging area
always mirrors what this site has. Nothing is written into the peer's live guest
directories; ``pve-mirror staging check`` there validates what arrived.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pve_mirror import rsync
from pve_mirror.actions.guest_extras import firewall_name, read_firewall, read_ha
from pve_mirror.actions.staging import (
    MANIFEST,
    MANIFEST_FORMAT,
    MAX_STAGED_BYTES,
    STAGING_DIR,
    relative_name,
)
from pve_mirror.engine.execute_plan import (
    Progress,
    StepOutcome,
    all_succeeded,
    execute_plan,
)
from pve_mirror.engine.plan import Plan, Step, step
from pve_mirror.errors import ConfigError, NotFoundError, PveMirrorError
from pve_mirror.pve.disks import resolve_guest_disks
from pve_mirror.pve.guestconfig import GuestConfig
from pve_mirror.pve.root import LABELS, ConfigRoot, GuestRef
from pve_mirror.pve.siteconfig import GuestEntry, PeerSite, load_site_config
from pve_mirror.pve.storage import StorageConfig, decode_config

SOURCE_DIR_PLACEHOLDER = Path("<tmpdir>")


def known_hosts_file(root: Path, peer: PeerSite) -> Path:
    """Give ``<root>/priv/pve-mirror/<peer>.known_hosts`` (used when it exists)."""
    return peer.files(root)["known-hosts"]


def ssh_options(root: Path, peer: PeerSite) -> rsync.SshOptions:
    """Give how to reach the peer over SSH; raises ConfigError if it has no ``ssh`` target.

    The dedicated key ``<root>/priv/pve-mirror/<peer>.ssh_key`` and known-hosts file
    ``<peer>.known_hosts`` are used when they exist.
    """
    if not peer.ssh:
        raise ConfigError(
            f"peer site {peer.name} has no 'ssh' target (e.g. 'ssh root@<peer node>')",
            str(root / "pve-mirror.cfg"),
        )
    key = peer.files(root)["ssh-key"]
    known = known_hosts_file(root, peer)
    return rsync.SshOptions(
        target=peer.ssh,
        port=peer.ssh_port,
        identity=key if key.is_file() else None,
        known_hosts=known if known.is_file() else None,
    )


@dataclass(frozen=True)
class SyncItem:
    """One guest config to send."""

    ref: GuestRef
    entry: GuestEntry | None = None  # how it is mirrored here: goes along in the manifest

    @property
    def name(self) -> str:
        """Give the file's name in the staging area (``qemu-server/100.conf``)."""
        return relative_name(self.ref.kind, self.ref.vmid)


@dataclass
class SyncPlan:
    """What a sync will do: the plan, the configs, where they go and how."""

    root: Path
    site: str
    peer: PeerSite
    ssh: rsync.SshOptions
    remote_dir: str
    items: list[SyncItem]
    storage_map: dict[str, str]
    plan: Plan
    warnings: list[str] = field(default_factory=list)

    def rsync_argv(self, source_dir: Path = SOURCE_DIR_PLACEHOLDER) -> list[str]:
        """Give the rsync command that pushes ``source_dir`` to the peer's staging area."""
        return rsync.push_argv(source_dir, self.ssh, self.remote_dir)

    def to_dict(self) -> dict[str, Any]:
        """Give the plan as plain data (what ``--dry-run`` shows)."""
        return {
            "site": self.site,
            "peer": self.peer.name,
            "destination": rsync.remote_spec(self.ssh, self.remote_dir + "/"),
            "files": [i.name for i in self.items] + [MANIFEST],
            "guests": [
                {"vmid": i.ref.vmid, "type": i.ref.kind, "node": i.ref.node, "file": i.name}
                for i in self.items
            ],
            "rsync": rsync.display(self.rsync_argv()),
            "plan": self.plan.to_dict(),
        }


def plan_sync(root: Path) -> SyncPlan:
    """Give the plan of a sync from ``root``'s site to its peer.

    An enabled guest without a config on any node is a warning (its staged copy on the
    peer goes away). Raises NotFoundError/ConfigError if pve-mirror is not set up or
    the peer has no SSH target.
    """
    site = load_site_config(root)
    local = site.local_name
    peer = site.peer()
    options = ssh_options(root, peer)
    remote_dir = f"{peer.root.rstrip('/')}/{STAGING_DIR}/{local}"
    config_root = ConfigRoot(root)
    by_vmid = {ref.vmid: ref for ref in config_root.guests()}
    warnings = list(site.warnings)
    items: list[SyncItem] = []
    for entry in site.guests():
        if not entry.enabled:
            continue
        ref = by_vmid.get(entry.vmid)
        if ref is None:
            warnings.append(
                f"{entry.section_id}: no config on any node of {local}; "
                f"not sent (its staged copy on {peer.name} is removed)"
            )
            continue
        if ref.kind != entry.kind:
            warnings.append(
                f"{entry.section_id}: VMID {entry.vmid} is a {LABELS[ref.kind]} "
                f"({ref.path}); not sent"
            )
            continue
        items.append(SyncItem(ref, entry))
    warnings.extend(config_root.warnings)
    destination = rsync.remote_spec(options, remote_dir + "/")
    plan = Plan("sync", f"send {len(items)} guest config(s) from {local} to {destination}")
    plan.notes.append(f"staging only: nothing is written to {peer.name}'s guest directories")
    for item in items:
        plan.add(
            step(
                "stage",
                1,
                item.name,
                f"{item.ref.kind}:{item.ref.vmid}",
                f"copy {item.ref.label} from node {item.ref.node} as {item.name}",
                mutates=False,
            )
        )
    plan.add(step("manifest", 2, MANIFEST, "sync", f"write {MANIFEST}", mutates=False))
    plan.add(
        step(
            "rsync",
            3,
            destination,
            "sync",
            f"rsync {len(items)} config(s) and {MANIFEST} to {destination} "
            "(--delete: configs no longer sent are removed there)",
        )
    )
    return SyncPlan(
        root, local, peer, options, remote_dir, items, site.storage_map(), plan, warnings
    )


@dataclass
class SyncResult:
    """What a sync did."""

    sync_plan: SyncPlan
    outcomes: list[StepOutcome]
    manifest: dict[str, Any]
    changed: list[str]
    argv: list[str]

    @property
    def ok(self) -> bool:
        """Tell whether every step succeeded."""
        return all_succeeded(self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        """Give the result as plain data."""
        return {
            "site": self.sync_plan.site,
            "peer": self.sync_plan.peer.name,
            "destination": rsync.remote_spec(self.sync_plan.ssh, self.sync_plan.remote_dir + "/"),
            "ok": self.ok,
            "guests": [
                {"file": name, **{k: v for k, v in meta.items() if k != "storages"}}
                for name, meta in self.manifest.get("files", {}).items()
            ],
            "changed": self.changed,
            "rsync": rsync.display(self.argv),
            "steps": [o.to_dict() for o in self.outcomes],
        }


def run_sync(sync_plan: SyncPlan, *, progress: Progress | None = None) -> SyncResult:
    """Assemble the configs and the manifest in a private temporary directory and rsync it.

    Gives the outcome of every step; a config that vanished or cannot be read fails
    its step and is not sent (the rsync still runs for the others). Raises nothing
    for a failed rsync: its step fails with rsync's or ssh's message.
    """
    now = time.time()
    synced_at = dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="seconds")
    files: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()
    storages = ConfigRoot(sync_plan.root).storage_config()
    by_name = {item.name: item for item in sync_plan.items}
    changed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pve-mirror-sync-") as tmp:
        work = Path(tmp)
        work.chmod(0o700)
        argv = sync_plan.rsync_argv(work)

        def stage(item_step: Step) -> str:
            item = by_name[item_step.subject]
            data, mtime = _read_config(item.ref)
            target = work / item.name
            target.parent.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            digest = hashlib.sha256(data).hexdigest()
            meta: dict[str, Any] = {
                "vmid": item.ref.vmid,
                "type": item.ref.kind,
                "node": item.ref.node,
                "sha256": digest,
                "size": len(data),
                "mtime": mtime,
                "synced_at": synced_at,
                "storages": _storages_of(item.ref, data, storages),
            }
            extras = _stage_extras(sync_plan.root, item, work, meta)
            if item.entry is not None:
                # The receiver records the guest with these after a failover.
                meta["mirror"] = {"mode": item.entry.mode, "schedule": item.entry.schedule}
            with lock:
                files[item.name] = meta
            return f"{len(data)} bytes, sha256 {digest[:12]}{extras}"

        def manifest(_step: Step) -> str:
            body = {
                "format": MANIFEST_FORMAT,
                "site": sync_plan.site,
                "synced_at": synced_at,
                "storage_map": sync_plan.storage_map,
                "files": dict(sorted(files.items())),
            }
            (work / MANIFEST).write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
            return f"{len(files)} file(s)"

        def push(_step: Step) -> str:
            done = rsync.run(argv)
            changed.extend(rsync.changed_files(done.stdout))
            return f"{len(changed)} file(s) changed" if changed else "already up to date"

        functions = {"stage": stage, "manifest": manifest, "rsync": push}
        outcomes = execute_plan(sync_plan.plan, functions, None, concurrency=4, progress=progress)
        body = {"files": dict(sorted(files.items()))}
    return SyncResult(sync_plan, outcomes, body, changed, argv)


def _stage_extras(root: Path, item: SyncItem, work: Path, meta: dict[str, Any]) -> str:
    """Stage the guest's firewall file in ``work`` and put it and the guest's HA resource
    into its manifest entry ``meta`` (actions/guest_extras.py); give what was added
    (for the step's detail). Raises ConfigError if either cannot be read."""
    vmid = item.ref.vmid
    try:
        firewall = read_firewall(root, vmid)
        ha = read_ha(root, item.ref.kind, vmid)
    except (OSError, ValueError) as exc:
        why = f"{item.ref.label}: cannot read its firewall or HA resource: {exc}"
        raise ConfigError(why) from exc
    added = ""
    if firewall is not None:
        target = work / firewall_name(vmid)
        target.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(firewall)
        meta["firewall"] = {"sha256": hashlib.sha256(firewall).hexdigest(), "size": len(firewall)}
        added += ", firewall rules"
    if ha is not None:
        meta["ha"] = ha
        added += f", HA resource ({ha.get('state')})"
    return added


def _read_config(ref: GuestRef) -> tuple[bytes, float]:
    try:
        with ref.path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            data = handle.read(MAX_STAGED_BYTES + 1)
    except FileNotFoundError as exc:
        raise NotFoundError(f"{ref.label}: {ref.path} no longer exists") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", str(ref.path)) from exc
    if len(data) > MAX_STAGED_BYTES:
        raise ConfigError("larger than 1 MiB, not a guest config", str(ref.path))
    return data, info.st_mtime


def _storages_of(ref: GuestRef, data: bytes, storages: StorageConfig) -> dict[str, str]:
    """Give ``{storage ID: type}`` of the storages the guest's disks use (for the receiver)."""
    text, _bad = decode_config(data)
    try:
        config = GuestConfig.parse(text, ref.kind, str(ref.path))
        disks = resolve_guest_disks(ref, config, storages, strict=False)
    except PveMirrorError:
        return {}
    return {d.storage: d.storage_type for d in disks if d.storage and d.storage_type}
