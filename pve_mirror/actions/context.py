"""What the mirroring actions share: the config root, the site config, and one cached
cluster connection per Ceph cluster (this site's, and the peer's).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from pve_mirror.ceph.access import ClusterAccess
from pve_mirror.ceph.cluster import Cluster
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.errors import ConfigError
from pve_mirror.pve.api import PveApi, open_api
from pve_mirror.pve.disks import GuestDisk, resolve_guest_disks
from pve_mirror.pve.root import ConfigRoot, GuestRef, GuestType
from pve_mirror.pve.siteconfig import SiteConfig, load_site_config
from pve_mirror.pve.storage import RbdStorage

KINDS: dict[str, GuestType] = {"vm": "qemu", "ct": "lxc"}


def local_access(site_name: str, root: Path, storage: RbdStorage) -> ClusterAccess:
    """Give how to reach the cluster behind a local RBD storage (files only, no key)."""
    return storage.connection(root).access(site_name)


@dataclass(frozen=True)
class MirroredDisk:
    """An RBD disk of a guest that mirroring acts on, with the storage it is on."""

    guest: GuestRef
    disk: GuestDisk
    storage: RbdStorage

    @property
    def spec(self) -> ImageSpec:
        """Give the disk's image (a mirrorable disk always has one)."""
        assert self.disk.spec is not None
        return self.disk.spec

    @property
    def label(self) -> str:
        """Give ``vm:100 scsi0`` for messages and step descriptions."""
        prefix = "vm" if self.guest.kind == "qemu" else "ct"
        where = f"@{self.disk.section}" if self.disk.section else ""
        return f"{prefix}:{self.guest.vmid} {self.disk.key}{where}"


@dataclass
class SiteContext:
    """One site's view: its PVE config root, its pve-mirror.cfg, and cluster connections.

    Use as a context manager so that every connection opened is closed.
    """

    root: ConfigRoot
    site: SiteConfig
    _clusters: dict[ClusterAccess, Cluster] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _connecting: dict[ClusterAccess, threading.Lock] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path | str, *, require_site: bool = True) -> SiteContext:
        """Give the context of config root ``root``.

        Raises NotFoundError if ``pve-mirror.cfg`` is missing and ``require_site``.
        """
        path = Path(root)
        return cls(ConfigRoot(path), load_site_config(path, required=require_site))

    def __enter__(self) -> SiteContext:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def warnings(self) -> list[str]:
        """Give the warnings of the site config, storage.cfg and the root, one line each."""
        return self.site.warnings + self.root.storage_config().warnings + self.root.warnings

    def cluster(self, access: ClusterAccess) -> Cluster:
        """Give a connected cluster for ``access``, connecting once per command.

        Connections to different clusters are made concurrently (the peer's while this
        site's answers); two threads asking for the same one share one connect.
        """
        with self._lock:
            cluster = self._clusters.get(access)
            if cluster is not None:
                return cluster
            gate = self._connecting.setdefault(access, threading.Lock())
        with gate:
            with self._lock:
                cluster = self._clusters.get(access)
            if cluster is None:
                cluster = Cluster(access)
                cluster.connect()
                with self._lock:
                    self._clusters[access] = cluster
            return cluster

    def local(self, storage: RbdStorage) -> Cluster:
        """Give the connected cluster behind a local RBD storage."""
        return self.cluster(local_access(self.site.local_name, self.root.path, storage))

    def peer(self) -> Cluster:
        """Give the connected peer cluster; raises ConfigError/CephError if unreachable."""
        return self.cluster(self.site.peer().ceph_access(self.root.path))

    def local_api(self) -> PveApi:
        """Give this site's PVE API: https if pve-mirror.cfg sets one, else pvesh."""
        endpoint = self.site.local_api(self.root.path)
        if endpoint is None:
            return open_api("pvesh")
        return open_api("https", endpoint, name=self.site.local_name)

    def peer_api(self) -> PveApi:
        """Give the peer site's PVE API (https with its API token)."""
        peer = self.site.peer()
        return open_api("https", peer.api_endpoint(self.root.path), name=peer.name)

    def close(self) -> None:
        """Close every connection opened."""
        with self._lock:
            for cluster in self._clusters.values():
                cluster.close()
            self._clusters.clear()

    def guest(self, kind: str, vmid: int) -> GuestRef:
        """Give the guest named on the command line (``vm``/``ct`` or qemu/lxc)."""
        return self.root.guest(KINDS.get(kind, kind), vmid)  # type: ignore[arg-type]

    def guests(self, kind: str, vmids: list[int]) -> list[GuestRef]:
        """Give the guests named on the command line, from one scan of the nodes.

        Raises NotFoundError naming the first one that does not exist.
        """
        return self.root.guests_named(KINDS.get(kind, kind), vmids)  # type: ignore[arg-type]

    def disks(self, ref: GuestRef) -> tuple[list[MirroredDisk], list[GuestDisk]]:
        """Give the guest's RBD disks (each image once) and the disks that cannot be mirrored.

        Raises ConfigError naming the disk if one cannot be resolved (unknown storage).
        A line of the config that cannot be parsed (a disk it may hide) becomes one of
        the root's warnings, ``file:line`` (the commands print :attr:`warnings`).
        """
        config = self.root.read_guest(ref)
        with self._lock:
            self.root.warnings.extend(w for w in config.warnings if w not in self.root.warnings)
        storages = self.root.storage_config()
        mirrored: list[MirroredDisk] = []
        others: list[GuestDisk] = []
        seen: set[ImageSpec] = set()
        for disk in resolve_guest_disks(ref, config, storages):
            if not disk.mirrorable or disk.spec is None:
                others.append(disk)
                continue
            if disk.spec in seen:
                continue
            seen.add(disk.spec)
            storage = storages.get(disk.storage or "")
            if not isinstance(storage, RbdStorage):
                raise ConfigError(
                    f"{disk.guest_label} {disk.key}: storage {disk.storage} is not rbd"
                )
            mirrored.append(MirroredDisk(ref, disk, storage))
        return mirrored, others

    def enabled_guests(self) -> list[GuestRef]:
        """Give the guests with an enabled entry in pve-mirror.cfg whose config is here.

        Entries of guests whose config is not on this site (they run on the peer) are
        left out.
        """
        here = {(ref.kind, ref.vmid): ref for ref in self.root.guests()}
        return [
            here[(entry.kind, entry.vmid)]
            for entry in self.site.guests()
            if entry.enabled and (entry.kind, entry.vmid) in here
        ]
