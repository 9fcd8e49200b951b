"""``pve-mirror hook install``: put the hookscript where every node that needs it finds it.

PVE resolves a guest's ``hookscript`` on the node that starts it (pve-guest-common's
PVE::GuestHelpers::check_hookscript: the snippet must exist and be executable
there), so a snippet on a node-local storage such as ``local`` must be on every
node that runs or may run a mirrored guest: the nodes of the enabled guests and the
node that receives failed-over guests. On a shared storage (``shared 1``, CephFS,
NFS, CIFS, GlusterFS) one copy serves all nodes.

This command writes the snippet on the node it runs on, asks the PVE API which
other nodes list it (``GET /nodes/{node}/storage/{storage}/content``), and sets
the hookscript only on guests whose node has it: it never sets a hookscript that a
node cannot find, and it names every node that lacks it.

The hookscript is set through the API (``PUT /nodes/{node}/{qemu,lxc}/{vmid}/config``
with the config's digest), never by editing the file: PVE then checks the snippet on
that node itself (PVE::GuestHelpers::check_hookscript), refuses a locked config, and
a concurrent change fails on the digest. PVE lets only root@pam set a hookscript
(qemu-server's $check_vm_modify_config_perm, PVE::LXC::check_ct_modify_config_perm;
an API token is refused whatever its privileges), so this goes through ``pvesh`` as
root on this node, as ``qm set --hookscript`` would.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pve_mirror.actions.hook import (
    HOOK_NAME,
    chain_file,
    hook_volid,
    package_pythonpath,
    snippet_text,
)
from pve_mirror.errors import ConfigError, NotFoundError, PolicyError, PveMirrorError
from pve_mirror.files import write_atomic
from pve_mirror.pve.root import CONFIG_DIRS, LABELS, ConfigRoot, GuestRef, GuestType
from pve_mirror.pve.storage import Storage, StorageConfig

if TYPE_CHECKING:
    from pve_mirror.engine.execute_plan import Progress, StepOutcome
    from pve_mirror.engine.plan import Plan, Step
    from pve_mirror.pve.api import PveApi
    from pve_mirror.pve.siteconfig import SiteConfig

# Storage types whose ``path`` holds snippets; the network ones are shared by nature.
_PATH_TYPES = ("dir", "nfs", "cifs", "cephfs", "glusterfs")
_SHARED_TYPES = ("nfs", "cifs", "cephfs", "glusterfs")
ENV_NODE = "PVE_MIRROR_NODE"


@dataclass
class InstallPlan:
    """What ``hook install`` will do, and which nodes have the snippet."""

    root: Path
    storage: str
    volid: str
    path: Path
    text: str
    plan: Plan
    this_node: str
    shared: bool
    # node -> "present", "this node", "missing", "outdated" or "unknown: <why>"
    nodes: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # enabled guests left without the hook because their node lacks the snippet
    unprotected: list[str] = field(default_factory=list)

    @property
    def lacking(self) -> list[str]:
        """Give the nodes that need the snippet and do not have it (or cannot tell)."""
        return sorted(n for n, state in self.nodes.items() if not _usable(state))


def _usable(state: str) -> bool:
    return state in ("present", "this node", "shared")


def local_node(root: Path) -> str:
    """Give the name of the node this runs on.

    ``$PVE_MIRROR_NODE`` if set, else the node ``<root>/local`` points to (pmxcfs links
    it to ``nodes/<this node>``), else the short host name, as PVE's nodename() does.
    """
    named = os.environ.get(ENV_NODE)
    if named:
        return named
    try:
        return Path(os.readlink(root / "local")).name
    except OSError:
        return socket.gethostname().split(".")[0]


def snippets_storage(storages: StorageConfig, storeid: str) -> tuple[Storage, Path, list[str]]:
    """Give the storage, its snippets directory and warnings.

    Raises NotFoundError for an unknown storage and PolicyError unless it is a storage
    with a path (dir, nfs, cifs, cephfs, glusterfs).
    """
    storage = storages.get(storeid)
    if storage is None:
        raise NotFoundError(f"storage '{storeid}' is not defined in storage.cfg")
    base = storage.options.get("path")
    if storage.type not in _PATH_TYPES or not base:
        raise PolicyError(
            f"storage '{storeid}' is {storage.type}, not a storage with a path: "
            "hookscripts must be files in a snippets/ directory"
        )
    warnings = []
    if "snippets" not in storage.content:
        warnings.append(
            f"storage '{storeid}' does not list 'snippets' in its content; PVE needs it "
            f"(pvesm set {storeid} --content {','.join((*storage.content, 'snippets'))})"
        )
    return storage, Path(base) / "snippets", warnings


def is_shared(storage: Storage) -> bool:
    """Tell whether every node sees the same files on ``storage``."""
    return storage.type in _SHARED_TYPES or storage.options.get("shared") == "1"


def snippet_states(
    api: PveApi | None, storeid: str, volid: str, size: int, nodes: list[str]
) -> dict[str, str]:
    """Give, per node, whether its ``storeid`` lists ``volid`` at ``size`` bytes.

    Asks each node's storage content through ``api``; a node whose answer fails (or
    all, without an API) is ``unknown: <why>``: fail closed, never assumed present.
    """
    states: dict[str, str] = {}
    for node in nodes:
        if api is None:
            states[node] = "unknown: no PVE API to ask"
            continue
        try:
            listed = api.get(f"/nodes/{node}/storage/{storeid}/content", content="snippets")
        except PveMirrorError as exc:
            states[node] = f"unknown: {exc}"
            continue
        match = [v for v in listed or [] if v.get("volid") == volid]
        if not match:
            states[node] = "missing"
        elif int(match[0].get("size", -1)) != size:
            states[node] = "outdated"
        else:
            states[node] = "present"
    return states


def plan_install(root: Path, storeid: str = "local", api: PveApi | None = None) -> InstallPlan:
    """Give the plan to install the hook on ``storeid`` and set it on the enabled guests.

    A guest that already has our hook is left alone; one with another hookscript gets
    ours with the old one chained; a locked guest, or one on a node without the
    snippet, is skipped with a warning. Raises NotFoundError/PolicyError for an
    unusable storage or a missing pve-mirror.cfg.
    """
    from pve_mirror.engine.plan import Plan, step
    from pve_mirror.pve.siteconfig import load_site_config

    site = load_site_config(root)
    config_root = ConfigRoot(root)
    storage, directory, warnings = snippets_storage(config_root.storage_config(), storeid)
    volid = hook_volid(storeid)
    target = directory / HOOK_NAME
    text = snippet_text(str(root), package_pythonpath())
    this_node = local_node(root)
    plan = Plan("hook-install", f"install the pve-mirror hookscript as {volid}")
    current = _read_text(target)
    if current == text and os.access(target, os.X_OK):
        plan.notes.append(f"{target} is up to date on {this_node}")
    else:
        what = "update" if current is not None else "write"
        plan.add(step("snippet", 1, str(target), "hook", f"{what} {target} on {this_node}"))

    wanted = _enabled_guests(config_root, site, warnings)
    needed = {ref.node for ref in wanted}
    if site.local_node:
        needed.add(site.local_node)  # failed-over guests start there
    shared = is_shared(storage)
    nodes = _node_states(api, storage, volid, len(text.encode()), needed, this_node)
    install = InstallPlan(root, storeid, volid, target, text, plan, this_node, shared, nodes)
    for node in install.lacking:
        warnings.append(
            f"node {node} lacks {volid} ({nodes[node]}): run 'pve-mirror hook install' "
            f"on {node}, or use a shared storage with snippets (--storage)"
        )

    for ref in wanted:
        config = config_root.read_guest(ref)
        old = config.main.get("hookscript")
        if not _usable(nodes.get(ref.node, "missing")):
            install.unprotected.append(f"{ref.label} on {ref.node}")
            if old == volid:
                warnings.append(f"{ref.label} on {ref.node}: has {volid} but {ref.node} lacks it")
            else:
                warnings.append(
                    f"{ref.label} on {ref.node}: hookscript not set ({ref.node} lacks it)"
                )
            continue
        if old == volid:
            plan.notes.append(f"{ref.label}: hookscript already set")
            continue
        lock = config.main.get("lock")
        if lock:
            warnings.append(f"{ref.label} is locked ({lock}); skipped, rerun later")
            continue
        group = f"{ref.kind}:{ref.vmid}"
        chained = f", chaining {old}" if old else ""
        description = f"{ref.label} on {ref.node}: set hookscript {volid}{chained}"
        plan.add(step("set-hook", 2, group, group, description, path=str(ref.path), old=old or ""))
    install.warnings = warnings
    return install


def _node_states(
    api: PveApi | None, storage: Storage, volid: str, size: int, needed: set[str], here: str
) -> dict[str, str]:
    """Give the snippet's state on each needed node and this one (see snippet_states)."""
    if is_shared(storage):
        return {node: "shared" for node in needed | {here}}
    nodes = snippet_states(api, storage.storeid, volid, size, sorted(needed - {here}))
    nodes[here] = "this node"
    return nodes


def _enabled_guests(
    config_root: ConfigRoot, site: SiteConfig, warnings: list[str]
) -> list[GuestRef]:
    """Give the enabled guests of pve-mirror.cfg that exist here (others are warnings)."""
    by_vmid = {ref.vmid: ref for ref in config_root.guests()}
    wanted: list[GuestRef] = []
    for entry in site.guests():
        if not entry.enabled:
            continue
        ref = by_vmid.get(entry.vmid)
        if ref is None or ref.kind != entry.kind:
            warnings.append(f"{entry.section_id}: no such guest here, skipped")
            continue
        wanted.append(ref)
    return wanted


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def run_install(
    install: InstallPlan, progress: Progress | None = None, root_api: PveApi | None = None
) -> list[StepOutcome]:
    """Carry out an install plan; give one outcome per step.

    Each guest's hookscript is set through ``root_api`` (default: pvesh, root@pam on
    this node) with the digest of the config it read; a guest whose hookscript changed
    since planning fails its step, as does one PVE refuses (snippet missing on its
    node, config locked).
    """
    from pve_mirror.engine.execute_plan import execute_plan

    def write_snippet(_step: Step) -> str:
        install.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = install.path.with_name(f".{HOOK_NAME}.tmp.{os.getpid()}")
        try:
            tmp.write_text(install.text, encoding="utf-8")
            tmp.chmod(0o755)
            os.replace(tmp, install.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ConfigError(f"cannot write: {exc.strerror}", str(install.path)) from exc
        return "written"

    def set_hook(item: Step) -> str:
        from pve_mirror.pve.api import open_api

        path = Path(item.param("path"))
        old = item.param("old")
        kind: GuestType = "qemu" if path.parent.name == CONFIG_DIRS["qemu"] else "lxc"
        vmid, node = int(path.stem), path.parent.parent.name
        api = root_api if root_api is not None else open_api("pvesh")
        url = f"/nodes/{node}/{kind}/{vmid}/config"
        current = api.get(url) or {}
        now = str(current.get("hookscript") or "")
        if now == install.volid:
            return "already set"
        if now != old:
            raise PolicyError(
                f"{LABELS[kind]} {vmid}: hookscript changed since planning "
                f"({old or 'none'} -> {now or 'none'}); rerun"
            )
        if old:
            write_atomic(chain_file(install.root, vmid), (old + "\n").encode())
        # the digest makes PVE refuse if the config changed since it was read
        change = {"hookscript": install.volid}
        if current.get("digest"):
            change["digest"] = str(current["digest"])
        api.put(url, **change)
        return f"chained {old}" if old else "set"

    return execute_plan(
        install.plan, {"snippet": write_snippet, "set-hook": set_hook}, None, progress=progress
    )
