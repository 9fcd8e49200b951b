"""What the guest hook checks, once the hookscript has run its chained one.

- pre-start: every mirrored RBD disk the start uses must be primary here and not at
  the peer. A peer that cannot be asked refuses the start (fail closed) unless this
  site holds a valid fence note against it or its admin declared it lost
  (pve_mirror.actions.fence). The connections to this site's clusters and to the
  peer's start at once
  and every disk is read at once (threads: librados and librbd wait without the GIL),
  so a start waits for the slowest answer, not for their sum.
- post-stop: a mirror snapshot of every snapshot-mode disk that is primary here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pve_mirror.actions import fence
from pve_mirror.ceph.access import ClusterAccess
from pve_mirror.ceph.cluster import Cluster, connected
from pve_mirror.ceph.mirror import SNAPSHOT, MirrorInfo, create_snapshot, mirror_info
from pve_mirror.errors import CephError, NotFoundError, PveMirrorError
from pve_mirror.pve.disks import GuestDisk, resolve_guest_disks
from pve_mirror.pve.guestconfig import GuestConfig
from pve_mirror.pve.root import CONFIG_DIRS, ConfigRoot, GuestRef, GuestType
from pve_mirror.pve.storage import RbdStorage, StorageConfig

T = TypeVar("T")
# Roles whose image a start does not write: detached disks and a snapshot's RAM state.
_IDLE_ROLES = ("unused", "vmstate")


@dataclass
class HookOutcome:
    """What the hook prints and its exit code."""

    exit_code: int = 0
    output: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # The chained hookscript's own stderr, passed on as it is.
    chained_stderr: list[str] = field(default_factory=list)


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
    disks: list[GuestDisk], storages: StorageConfig, root: Path, timeout: float
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
            access = connection.access(storage.storeid).with_mount_timeout(timeout)
            groups[key] = (access, [])
        groups[key][1].append(disk)
    return list(groups.values())


class _Ask:
    """Connect to one cluster and read the mirror info of some disks there, in a thread of
    its own: a handshake and an image open mostly wait on the network, so the asks to
    this site's clusters and to the peer's overlap."""

    def __init__(
        self, access: ClusterAccess, timeout: float, disks: list[GuestDisk], *, missing_ok: bool
    ) -> None:
        self.access = access
        self.timeout = timeout
        self.disks = disks
        self.missing_ok = missing_ok
        self._cluster: Cluster | None = None
        self._infos: list[MirrorInfo | None] = []
        self._error: PveMirrorError | None = None
        self._done = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            cluster = Cluster(self.access)
            cluster.connect(self.timeout)
            self._cluster = cluster
            self._infos = _at_once(self._read, self.disks)
        except PveMirrorError as exc:
            self._error = exc
        finally:
            self._done.set()

    def _read(self, disk: GuestDisk) -> MirrorInfo | None:
        assert disk.spec is not None and self._cluster is not None
        try:
            return mirror_info(self._cluster, disk.spec)
        except NotFoundError:
            if self.missing_ok:
                return None
            raise

    def result(self) -> list[MirrorInfo | None]:
        """Give the disks' mirror info (None: no such image, with ``missing_ok``).

        Raises the CephError (or NotFoundError) met connecting or reading.
        """
        # The connect is bounded by its mount timeout; this only guards against a hang.
        if not self._done.wait(self.timeout + 30):
            raise CephError(f"no answer from {self.access.describe()}")
        if self._error is not None:
            raise self._error
        return self._infos

    def close(self) -> None:
        """Wait for the ask to end (bounded), then close its connection."""
        if self._done.wait(self.timeout + 30) and self._cluster is not None:
            self._cluster.close()


def _at_once(function: Callable[[GuestDisk], T], disks: list[GuestDisk]) -> list[T]:
    """Give ``function`` of every disk, called from a thread each (librbd waits without
    the GIL); raises the first disk's error."""
    if len(disks) == 1:
        return [function(disks[0])]
    results: list[T | BaseException] = [RuntimeError("not run")] * len(disks)

    def run(index: int) -> None:
        try:
            results[index] = function(disks[index])
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(disks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out: list[T] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        out.append(result)
    return out


def pre_start(
    root: Path,
    vmid: int,
    outcome: HookOutcome,
    timeout: float,
    peer_timeout: float,
    *,
    close: bool = True,
) -> None:
    """Refuse the start unless every mirrored disk is primary here and not at the peer.

    This site's clusters and the peer's are asked at once, every disk at once: a start
    waits for the slowest answer, not for their sum. The peer is asked before this
    site has answered, since its answer is needed whenever the start may go on.
    Without ``close`` the connections are left to the process exit (the hookscript
    exits right after; shutting a connection down costs it more than the kernel's
    closing of its sockets).
    """
    ref, disks, storages = started_disks(root, vmid)
    groups = cluster_groups(disks, storages, root, timeout)
    if not groups:
        return
    asks = [(_Ask(access, timeout, group, missing_ok=False), group) for access, group in groups]
    peer = _ask_peer(root, peer_timeout, [d for _access, group in groups for d in group], outcome)
    try:
        blocked: list[str] = []
        primary_here: set[int] = set()
        for ask, group in asks:
            for disk, info in zip(group, ask.result(), strict=True):
                if info is not None and info.state != "disabled" and not info.primary:
                    blocked.append(f"{disk.key} ({disk.spec})")
                elif info is not None and info.state != "disabled":
                    primary_here.add(id(disk))
        if blocked:
            outcome.exit_code = 1
            disks_text = ", ".join(blocked)
            outcome.errors.append(
                f"{ref.label}: refusing to start: mirrored disk {disks_text} is not primary "
                "at this site (fail over with 'pve-mirror failover' first, or start it on "
                "the primary site)"
            )
            return
        if primary_here and peer is not None:
            _check_peer_not_primary(ref, primary_here, peer, outcome)
    finally:
        if close:
            _close_all([ask for ask, _group in asks] + ([peer.ask] if peer is not None else []))


def _close_all(asks: list[_Ask]) -> None:
    threads = [threading.Thread(target=ask.close, daemon=True) for ask in asks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@dataclass
class _Peer:
    """The ask of the peer's cluster, and what the hook needs if it gets no answer."""

    name: str
    local: str
    root: Path
    ask: _Ask


def _ask_peer(
    root: Path, timeout: float, disks: list[GuestDisk], outcome: HookOutcome
) -> _Peer | None:
    """Start asking the peer's cluster about ``disks``; None when there is nothing to ask.

    Nothing to ask: no peer paired (no site config, or no Ceph conf of the peer), or
    this site holds a valid fence note against the peer (it promoted by force: it is
    the authority). A note that is not valid is ignored with a warning.
    """
    from pve_mirror.pve.siteconfig import load_site_config

    try:
        site = load_site_config(root, required=True)
        peer = site.peer()
        access = peer.ceph_access(root)
        local = site.local_name
    except PveMirrorError:
        return None
    if fence.read_fence(root, peer.name, local, outcome.output) is not None:
        return None
    ask = _Ask(access.with_mount_timeout(timeout), timeout, disks, missing_ok=True)
    return _Peer(peer.name, local, root, ask)


def _check_peer_not_primary(
    ref: GuestRef, primary_here: set[int], peer: _Peer, outcome: HookOutcome
) -> None:
    """Refuse when the peer's copy of a disk primary here is primary too (this site was
    failed away from by force).

    Fails closed: a peer that cannot be asked (down, cut off, or refusing our key) may
    run this guest on copies it promoted by force, so the start is refused unless the
    admin declared the peer lost here (``pve-mirror site peer-lost``). When the peer
    answers, such a declaration is removed: it only holds while the peer is silent.
    """
    try:
        infos = peer.ask.result()
    except PveMirrorError as exc:
        lost = fence.read_lost(peer.root, peer.name, peer.local, outcome.output)
        if lost is not None:
            outcome.output.append(
                f"warning: {ref.label}: peer site {peer.name} cannot be asked ({exc}); "
                f"starting since it was declared lost at {lost.since()} ({lost.path})"
            )
            return
        outcome.exit_code = 1
        outcome.errors.append(
            f"{ref.label}: refusing to start: peer site {peer.name} cannot be asked ({exc}), "
            "so it may run this guest on copies it promoted; if it is down or cut off for "
            f"good, run 'pve-mirror site peer-lost --yes' on {peer.local} (docs/admin-guide.md, "
            "Fencing)"
        )
        return
    _forget_lost(peer, outcome)
    both = [
        f"{disk.key} ({disk.spec})"
        for disk, info in zip(peer.ask.disks, infos, strict=True)
        if id(disk) in primary_here
        and info is not None
        and info.state != "disabled"
        and info.primary
    ]
    if both:
        outcome.exit_code = 1
        outcome.errors.append(
            f"{ref.label}: refusing to start: disk {', '.join(both)} is primary at "
            f"{peer.name} too (a forced failover moved the guest there); run "
            "'pve-mirror failback' on this site"
        )


def _forget_lost(peer: _Peer, outcome: HookOutcome) -> None:
    """Remove a peer-lost declaration once the peer answers (one local stat otherwise)."""
    path = fence.lost_path(peer.root, peer.name)
    if not path.exists():
        return
    try:
        path.unlink()
    except OSError as exc:
        outcome.output.append(f"warning: cannot remove {path} ({exc.strerror})")
        return
    outcome.output.append(f"pve-mirror: peer site {peer.name} answers again: removed {path}")


def post_stop(root: Path, vmid: int, outcome: HookOutcome, timeout: float) -> None:
    """Take a mirror snapshot of every snapshot-mode disk that is primary here (warnings)."""
    ref, disks, storages = started_disks(root, vmid)
    for access, group in cluster_groups(disks, storages, root, timeout):
        try:
            with connected(access, timeout) as cluster:
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
