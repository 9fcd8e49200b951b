"""Install one validated staged config into ``nodes/<node>/``, never over another guest."""

from __future__ import annotations

import errno
import re
from pathlib import Path

from pve_mirror.actions.staging import MAX_STAGED_BYTES, StagedGuest, read_nofollow
from pve_mirror.actions.staging_check import map_storages
from pve_mirror.errors import (
    ConfigError,
    FileSystemError,
    NotFoundError,
    PolicyError,
    PveMirrorError,
)
from pve_mirror.files import write_atomic
from pve_mirror.pve.root import CONFIG_DIRS

CONFIG_MODE = 0o640
_NODE_NAME = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?", re.ASCII)


def existing_configs(root: Path, vmid: int) -> list[Path]:
    """Give every config of ``vmid`` on any node, VM or CT."""
    nodes = root / "nodes"
    found = []
    if nodes.is_dir():
        for node in sorted(nodes.iterdir()):
            for sub in CONFIG_DIRS.values():
                path = node / sub / f"{vmid}.conf"
                if path.exists() or path.is_symlink():
                    found.append(path)
    return found


def render_for_install(staged: StagedGuest, storage_map: dict[str, str]) -> bytes:
    """Give the bytes :func:`install_staged` would write (storages mapped).

    Raises PolicyError if the staged config did not pass validation.
    """
    if not staged.ok or staged.config is None:
        why = "; ".join(staged.problems) or "not validated"
        raise PolicyError(f"{staged.label}: staged config cannot be installed: {why}")
    return map_storages(staged.config, storage_map).render_bytes()


def install_staged(
    root: Path, staged: StagedGuest, target_node: str, storage_map: dict[str, str]
) -> Path:
    """Write ``staged`` as ``<root>/nodes/<target_node>/{qemu-server,lxc}/<vmid>.conf``.

    Storage IDs are rewritten through ``storage_map`` (sender's ID -> ours). The file is
    written atomically (temporary file in the same directory, then rename) with mode
    0640, and the path is given. A rerun that finds exactly these bytes already there
    succeeds without writing. Raises PolicyError if the config is not valid or the VMID
    exists anywhere here (any node, VM or CT) with other content, also when pmxcfs
    refuses the name (EEXIST), NotFoundError if the node does not exist, ConfigError
    for an invalid node name, FileSystemError if the file cannot be written.
    """
    if not _NODE_NAME.fullmatch(target_node):
        raise ConfigError(f"invalid node name {target_node!r}")
    node_dir = root / "nodes" / target_node
    if not node_dir.is_dir():
        raise NotFoundError(f"node {target_node} does not exist in {root}/nodes")
    data = render_for_install(staged, storage_map)
    target = node_dir / CONFIG_DIRS[staged.kind] / f"{staged.vmid}.conf"
    for path in existing_configs(root, staged.vmid):
        if path == target and not path.is_symlink() and _same_content(path, data):
            return target
        raise PolicyError(
            f"{staged.label}: VMID {staged.vmid} already exists here ({path}); "
            "refusing to overwrite it"
        )
    try:
        write_atomic(target, data, CONFIG_MODE)
    except FileSystemError as exc:
        if exc.errno != errno.EEXIST:
            raise
        # pmxcfs knows every VMID of the cluster (also one created since the check above).
        raise PolicyError(
            f"{staged.label}: VMID {staged.vmid} already exists in the cluster "
            f"(pmxcfs refused {target}); refusing to overwrite it"
        ) from exc
    return target


def _same_content(path: Path, data: bytes) -> bool:
    try:
        return read_nofollow(path, MAX_STAGED_BYTES) == data
    except (OSError, PveMirrorError):
        return False
