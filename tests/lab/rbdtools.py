"""Hand-made RBD mirroring steps for tests and the demo (python3-rbd, no pve_mirror code).

Replication is judged from mirror snapshots, never from status strings (gotcha 12:
image status can be 30 s stale): a secondary has caught up when its newest complete
non-primary mirror snapshot copies the primary's newest mirror snapshot.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import rados
import rbd

from tests.lab.ceph_lab import CephSite
from tests.lab.wait import retry, wait_until

MiB = 1 << 20
CHUNK = 4 * MiB

# Mirror snapshot states (rbd_snap_mirror_state_t)
PRIMARY = 0
PRIMARY_DEMOTED = 1
NON_PRIMARY = 2
NON_PRIMARY_DEMOTED = 3


@dataclass(frozen=True)
class MirrorSnap:
    """One mirror snapshot of an image, as ``Image.list_snaps()`` shows it."""

    id: int
    name: str
    state: int
    complete: bool
    primary_mirror_uuid: str
    primary_snap_id: int

    @property
    def is_primary(self) -> bool:
        return self.state in (PRIMARY, PRIMARY_DEMOTED)


@contextlib.contextmanager
def open_image(
    site: CephSite, name: str, read_only: bool = False, snap_id: int | None = None
) -> Iterator[Any]:
    """Give an open ``rbd.Image`` on ``site`` (optionally read-only at a snapshot id)."""
    with site.ioctx() as ioctx, rbd.Image(ioctx, name, read_only=read_only) as image:
        if snap_id is not None:
            image.set_snap_by_id(snap_id)
        yield image


def image_exists(site: CephSite, name: str) -> bool:
    """Tell whether image ``name`` exists in the site's pool."""
    with site.ioctx() as ioctx:
        return name in rbd.RBD().list(ioctx)


def mirror_snaps(image: Any) -> list[MirrorSnap]:
    """Give the image's mirror snapshots, oldest first."""
    snaps = []
    for snap in image.list_snaps():
        if snap.get("namespace") != rbd.RBD_SNAP_NAMESPACE_TYPE_MIRROR:
            continue
        mirror = snap.get("mirror", {})
        snaps.append(
            MirrorSnap(
                id=int(snap["id"]),
                name=str(snap["name"]),
                state=int(mirror.get("state", -1)),
                complete=bool(mirror.get("complete", False)),
                primary_mirror_uuid=str(mirror.get("primary_mirror_uuid", "")),
                primary_snap_id=int(mirror.get("primary_snap_id", 0) or 0),
            )
        )
    return sorted(snaps, key=lambda s: s.id)


def is_primary(site: CephSite, name: str) -> bool:
    """Tell whether the site's copy of ``name`` is the mirroring primary."""
    with open_image(site, name, read_only=True) as image:
        return bool(image.mirror_image_get_info()["primary"])


def create_image(site: CephSite, name: str, size: int = 64 * MiB) -> None:
    """Create image ``name`` (layering, exclusive-lock; what snapshot mirroring needs)."""
    with site.ioctx() as ioctx:
        rbd.RBD().create(ioctx, name, size, old_format=False)


def enable_snapshot_mirroring(site: CephSite, name: str) -> None:
    """Enable snapshot-based mirroring of ``name`` on ``site`` (which becomes primary)."""
    with open_image(site, name) as image:
        image.mirror_image_enable(rbd.RBD_MIRROR_IMAGE_MODE_SNAPSHOT)


def write(site: CephSite, name: str, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` and flush."""
    with open_image(site, name) as image:
        image.write(data, offset)
        image.flush()


def create_mirror_snapshot(site: CephSite, name: str) -> int:
    """Create a mirror snapshot of the primary ``name``; give its snapshot id."""
    with open_image(site, name) as image:
        return int(image.mirror_image_create_snapshot())


def newest_primary_snap(site: CephSite, name: str) -> MirrorSnap | None:
    """Give the newest primary (or primary-demoted) mirror snapshot of ``name``."""
    with open_image(site, name, read_only=True) as image:
        snaps = [s for s in mirror_snaps(image) if s.is_primary]
    return snaps[-1] if snaps else None


def newest_copied_snap(site: CephSite, name: str) -> MirrorSnap | None:
    """Give the newest complete non-primary mirror snapshot of ``name`` on ``site``."""
    with open_image(site, name, read_only=True) as image:
        snaps = [s for s in mirror_snaps(image) if not s.is_primary and s.complete]
    return snaps[-1] if snaps else None


def checksum(site: CephSite, name: str, snap_id: int | None = None) -> str:
    """Give the sha256 of the whole image (at a snapshot id if given)."""
    digest = hashlib.sha256()
    with open_image(site, name, read_only=True, snap_id=snap_id) as image:
        size = int(image.size())
        for offset in range(0, size, CHUNK):
            digest.update(image.read(offset, min(CHUNK, size - offset)))
    return digest.hexdigest()


def replicated(primary: CephSite, secondary: CephSite, name: str) -> MirrorSnap | None:
    """Give the secondary's copy of the primary's newest mirror snapshot once complete.

    None while the copy is missing or incomplete (or the image does not exist yet on
    the secondary).
    """
    source = newest_primary_snap(primary, name)
    if source is None or not image_exists(secondary, name):
        return None
    copied = newest_copied_snap(secondary, name)
    if copied is not None and copied.primary_snap_id == source.id:
        return copied
    return None


def wait_replicated(
    primary: CephSite, secondary: CephSite, name: str, timeout: float = 120.0
) -> tuple[int, int]:
    """Wait until ``secondary`` holds a complete copy of the primary's newest mirror snapshot.

    Gives ``(primary_snap_id, secondary_snap_id)``. Raises WaitTimeoutError.
    """
    copied = wait_until(
        lambda: replicated(primary, secondary, name),
        timeout=timeout,
        what=f"{secondary.name} to copy the newest mirror snapshot of {name} from {primary.name}",
        retry_on=(rbd.ImageNotFound,),
    )
    return copied.primary_snap_id, copied.id


def wait_byte_identical(
    primary: CephSite, secondary: CephSite, name: str, timeout: float = 120.0
) -> str:
    """Wait for replication of the newest mirror snapshot, then compare the two copies.

    Compares the primary at its newest mirror snapshot with the secondary's head
    (the image as a failover would find it); gives the checksum. Raises WaitTimeoutError,
    or AssertionError if they differ.

    Not compared: the secondary *at* its non-primary snapshot. Measured on 16.2.15,
    rbd-mirror creates that snapshot before it copies the delta into the head, so
    reading at it gives the state of the previous sync (listsnaps shows the clone).
    """
    source_id, _ = wait_replicated(primary, secondary, name, timeout)
    want = checksum(primary, name, source_id)
    got = checksum(secondary, name)
    assert got == want, f"{name}: head on {secondary.name} differs from {primary.name}"
    return want


def demote(site: CephSite, name: str) -> None:
    """Demote the primary ``name`` on ``site``."""
    with open_image(site, name) as image:
        image.mirror_image_demote()


def promote(site: CephSite, name: str, timeout: float = 60.0, force: bool = False) -> None:
    """Promote ``name`` on ``site``, retrying while the peer's demotion is not yet seen.

    Right after a demotion is copied, promote can fail with EROFS (the peer's
    rbd-mirror still holds the lock, gotcha 13) or EBUSY (demotion not propagated,
    gotcha 15); both are retried until ``timeout``. Raises WaitTimeoutError.
    """

    def attempt() -> None:
        with open_image(site, name) as image:
            image.mirror_image_promote(force)

    retry(
        attempt,
        retry_on=(rbd.ReadOnlyImage, rbd.ImageBusy),
        timeout=timeout,
        what=f"promote {name} on {site.name}",
        interval=0.2,
    )


def failover(old: CephSite, new: CephSite, name: str, timeout: float = 120.0) -> None:
    """Orderly switch of the primary of ``name`` from ``old`` to ``new``.

    Demotes on ``old``, waits until ``new`` copied the demotion snapshot, promotes on
    ``new`` (bounded retry) and waits until ``old`` copied the promotion snapshot, so
    a failback right after is safe (gotcha 14). Raises WaitTimeoutError or rbd.Error.
    """
    demote(old, name)
    wait_replicated(old, new, name, timeout)
    promote(new, name, timeout)
    wait_replicated(new, old, name, timeout)


def remove_image(primary: CephSite, secondary: CephSite, name: str, timeout: float = 60.0) -> None:
    """Remove a mirrored image from both sites (from the primary; the peer follows).

    Disables mirroring on the primary, removes it there, and waits until the
    secondary's rbd-mirror deleted its copy; a leftover secondary is removed too.
    """
    if image_exists(primary, name):
        with open_image(primary, name) as image, contextlib.suppress(rbd.InvalidArgument):
            image.mirror_image_disable(True)
        with primary.ioctx() as ioctx:
            rbd.RBD().remove(ioctx, name)
    try:
        wait_until(
            lambda: not image_exists(secondary, name),
            timeout=timeout,
            what=f"{secondary.name} to delete its copy of {name}",
        )
    except AssertionError:
        with secondary.ioctx() as ioctx, contextlib.suppress(rbd.Error, rados.Error):
            rbd.RBD().remove(ioctx, name)
