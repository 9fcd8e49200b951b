"""The PVE config root (``/etc/pve``): which guests exist, on which node, and their configs.

Guests are found as ``nodes/<node>/qemu-server/<vmid>.conf`` (VMs) and
``nodes/<node>/lxc/<vmid>.conf`` (containers) on every node, as pmxcfs lays them out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pve_mirror.errors import ConfigError, NotFoundError
from pve_mirror.pve.guestconfig import GuestConfig
from pve_mirror.pve.storage import StorageConfig, decode_config, load_storage_config

GuestType = Literal["qemu", "lxc"]

CONFIG_DIRS: dict[GuestType, str] = {"qemu": "qemu-server", "lxc": "lxc"}
LABELS: dict[GuestType, str] = {"qemu": "VM", "lxc": "CT"}
_CONF_NAME = re.compile(r"([1-9]\d{2,8})\.conf", re.ASCII)
_NODE_NAME = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?", re.ASCII)
# A config bigger than this is not a guest config (pmxcfs limits files to 1 MiB).
MAX_CONFIG_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, order=True)
class GuestRef:
    """Where a guest's config is: its VMID, type, node and file."""

    vmid: int
    kind: GuestType
    node: str
    path: Path

    @property
    def label(self) -> str:
        """Give ``VM 100`` or ``CT 100``."""
        return f"{LABELS[self.kind]} {self.vmid}"


@dataclass
class ConfigRoot:
    """A PVE config root (``/etc/pve`` or a copy of it for tests)."""

    path: Path
    warnings: list[str] = field(default_factory=list)
    _storage: StorageConfig | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def guests(self) -> list[GuestRef]:
        """Give every guest of every node, sorted by VMID.

        A VMID with configs on two nodes (or as VM and CT) is a warning naming both
        files; the first one (by node name, VMs before CTs) is used. Raises
        NotFoundError when the root has no ``nodes`` directory.
        """
        nodes_dir = self.path / "nodes"
        if not nodes_dir.is_dir():
            raise NotFoundError(f"{self.path} is not a PVE config root (no nodes/ directory)")
        found: dict[int, GuestRef] = {}
        for node_dir in sorted(nodes_dir.iterdir()):
            if not _NODE_NAME.fullmatch(node_dir.name) or not node_dir.is_dir():
                continue
            for kind in ("qemu", "lxc"):
                guest_dir = node_dir / CONFIG_DIRS[kind]
                if not guest_dir.is_dir():
                    continue
                for conf in sorted(guest_dir.iterdir()):
                    m = _CONF_NAME.fullmatch(conf.name)
                    if not m or not conf.is_file():
                        continue
                    ref = GuestRef(int(m.group(1)), kind, node_dir.name, conf)
                    other = found.get(ref.vmid)
                    if other is not None:
                        self._warn(
                            f"VMID {ref.vmid} is defined twice: {other.path} and {conf}; "
                            f"using {other.path}"
                        )
                        continue
                    found[ref.vmid] = ref
        return [found[vmid] for vmid in sorted(found)]

    def guest(self, kind: GuestType, vmid: int) -> GuestRef:
        """Give the guest ``vmid`` of type ``kind``; raises NotFoundError if there is none."""
        return self.guests_named(kind, [vmid])[0]

    def guests_named(self, kind: GuestType, vmids: Iterable[int]) -> list[GuestRef]:
        """Give the guests ``vmids`` of type ``kind``, in that order, from one scan of
        the nodes; raises NotFoundError naming the first one missing (or of the other
        type)."""
        by_vmid = {ref.vmid: ref for ref in self.guests()}
        out = []
        for vmid in vmids:
            ref = by_vmid.get(vmid)
            where = f"{self.path}/nodes/*/{CONFIG_DIRS[kind]}"
            if ref is None:
                raise NotFoundError(f"no {LABELS[kind]} {vmid} in {where}")
            if ref.kind != kind:
                raise NotFoundError(
                    f"no {LABELS[kind]} {vmid} in {where} "
                    f"({vmid} is a {'container' if ref.kind == 'lxc' else 'VM'} on {ref.node})"
                )
            out.append(ref)
        return out

    def storage_config(self) -> StorageConfig:
        """Give ``storage.cfg`` (read once)."""
        if self._storage is None:
            self._storage = load_storage_config(self.path)
        return self._storage

    def read_guest(self, ref: GuestRef, *, strict: bool = False) -> GuestConfig:
        """Give the parsed config of ``ref``; bad lines are in its ``warnings``.

        Raises NotFoundError if the file vanished and ConfigError if it cannot be read.
        """
        try:
            with ref.path.open("rb") as handle:
                data = handle.read(MAX_CONFIG_BYTES + 1)
        except FileNotFoundError as exc:
            raise NotFoundError(f"{ref.label}: {ref.path} no longer exists") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", str(ref.path)) from exc
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB, not a guest config",
                str(ref.path),
            )
        text, bad_line = decode_config(data)
        config = GuestConfig.parse(text, ref.kind, str(ref.path), strict=strict)
        if bad_line is not None:
            error = ConfigError("invalid UTF-8, read as is", str(ref.path), bad_line)
            config.errors.insert(0, error)
        return config
