"""Image-level RBD mirroring through librbd: enable, disable, snapshot, promote, demote.

Every function takes a connected :class:`Cluster` and an :class:`ImageSpec`, is
idempotent where the operation allows (a promote of a primary image is a success),
and gives a one-line detail of what it did. librbd errors become CephError naming
the image and the operation.
"""

from __future__ import annotations

import datetime as dt
import errno
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import rbd

from pve_mirror.ceph.cluster import Cluster, ceph_call, describe_error
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.errors import CephError, NotFoundError

SNAPSHOT = "snapshot"
JOURNAL = "journal"

MODE_BY_NUMBER = {
    rbd.RBD_MIRROR_IMAGE_MODE_SNAPSHOT: SNAPSHOT,
    rbd.RBD_MIRROR_IMAGE_MODE_JOURNAL: JOURNAL,
}
NUMBER_BY_MODE = {name: number for number, name in MODE_BY_NUMBER.items()}
STATE_BY_NUMBER = {
    rbd.RBD_MIRROR_IMAGE_DISABLING: "disabling",
    rbd.RBD_MIRROR_IMAGE_ENABLED: "enabled",
    rbd.RBD_MIRROR_IMAGE_DISABLED: "disabled",
}
# librbd's snapshot namespace for mirror snapshots, and their states.
SNAP_NAMESPACE_MIRROR = 3
SNAP_STATES = ("primary", "primary-demoted", "non-primary", "non-primary-demoted")


@dataclass(frozen=True)
class MirrorInfo:
    """An image's mirroring state on one cluster."""

    state: str  # enabled, disabled, disabling
    mode: str | None  # snapshot, journal, or None when disabled
    primary: bool
    global_id: str


@dataclass(frozen=True)
class MirrorSnapshot:
    """One mirror snapshot of an image."""

    snap_id: int
    state: str
    complete: bool
    primary_snap_id: int | None
    timestamp: float

    @property
    def is_primary(self) -> bool:
        """Tell whether the snapshot was taken on the primary side."""
        return self.state.startswith("primary")


@contextmanager
def open_image(cluster: Cluster, spec: ImageSpec, *, read_only: bool = False) -> Iterator[Any]:
    """Give an open rbd.Image; raises NotFoundError if it does not exist, CephError otherwise."""
    ioctx = cluster.ioctx(spec.pool, spec.namespace)
    try:
        image = rbd.Image(ioctx, spec.image, read_only=read_only)
    except rbd.ImageNotFound as exc:
        raise NotFoundError(f"{cluster.access.name}: image {spec} does not exist") from exc
    except rbd.Error as exc:
        raise CephError(f"{cluster.access.name}: open {spec}: {describe_error(exc)}") from exc
    try:
        yield image
    finally:
        image.close()


def image_exists(cluster: Cluster, spec: ImageSpec) -> bool:
    """Tell whether the image exists on ``cluster``."""
    try:
        with open_image(cluster, spec, read_only=True):
            return True
    except NotFoundError:
        return False


def mirror_info(cluster: Cluster, spec: ImageSpec) -> MirrorInfo:
    """Give the image's mirroring state; raises NotFoundError if it does not exist."""
    with open_image(cluster, spec, read_only=True) as image:
        return _info(cluster, spec, image)


def _info(cluster: Cluster, spec: ImageSpec, image: Any) -> MirrorInfo:
    what = f"{cluster.access.name}: mirror info of {spec}"
    info = ceph_call(what, image.mirror_image_get_info)
    state = STATE_BY_NUMBER.get(info["state"], str(info["state"]))
    mode = None
    if state != "disabled":
        mode = MODE_BY_NUMBER.get(ceph_call(what, image.mirror_image_get_mode))
    return MirrorInfo(state, mode, bool(info["primary"]), str(info["global_id"]))


def features(cluster: Cluster, spec: ImageSpec) -> int:
    """Give the image's feature bits."""
    with open_image(cluster, spec, read_only=True) as image:
        return int(ceph_call(f"{cluster.access.name}: features of {spec}", image.features))


def enable(cluster: Cluster, spec: ImageSpec, mode: str) -> str:
    """Enable mirroring of the image in ``mode``; a no-op if already enabled in that mode.

    Journal mode first turns on exclusive-lock and journaling. Snapshot mode leaves
    the image with at least one primary mirror snapshot. Raises CephError if the image
    is mirrored in the other mode or is not primary.
    """
    name = cluster.access.name
    with open_image(cluster, spec) as image:
        info = _info(cluster, spec, image)
        if info.state == "enabled":
            if info.mode != mode:
                raise CephError(
                    f"{name}: {spec} is already mirrored in {info.mode} mode, not {mode}; "
                    "disable it first to change the mode"
                )
            return f"already enabled ({mode})"
        if mode == JOURNAL:
            _ensure_features(cluster, spec, image, rbd.RBD_FEATURE_EXCLUSIVE_LOCK)
            _ensure_features(cluster, spec, image, rbd.RBD_FEATURE_JOURNALING)
        ceph_call(
            f"{name}: enable {mode} mirroring of {spec}",
            lambda: image.mirror_image_enable(NUMBER_BY_MODE[mode]),
        )
        if mode == SNAPSHOT and not _mirror_snaps(cluster, spec, image):
            ceph_call(f"{name}: mirror snapshot of {spec}", image.mirror_image_create_snapshot)
    return f"enabled ({mode})"


def _ensure_features(cluster: Cluster, spec: ImageSpec, image: Any, feature: int) -> None:
    current = int(ceph_call(f"{cluster.access.name}: features of {spec}", image.features))
    if not current & feature:
        ceph_call(
            f"{cluster.access.name}: enable feature {feature:#x} on {spec}",
            lambda: image.update_features(feature, True),
        )


def disable(cluster: Cluster, spec: ImageSpec, *, force: bool = False) -> str:
    """Disable mirroring of the image (a no-op if it is not mirrored)."""
    with open_image(cluster, spec) as image:
        info = _info(cluster, spec, image)
        if info.state == "disabled":
            return "not mirrored"
        ceph_call(
            f"{cluster.access.name}: disable mirroring of {spec}",
            lambda: image.mirror_image_disable(force),
        )
    return "mirroring disabled"


def create_snapshot(cluster: Cluster, spec: ImageSpec) -> int:
    """Take a primary mirror snapshot and give its id; raises CephError if not primary."""
    with open_image(cluster, spec) as image:
        return int(
            ceph_call(
                f"{cluster.access.name}: mirror snapshot of {spec}",
                image.mirror_image_create_snapshot,
            )
        )


def promote(cluster: Cluster, spec: ImageSpec, *, force: bool = False) -> str:
    """Make the image primary on ``cluster``; a success if it already is.

    Raises CephError (``busy``) when the peer is still primary and ``force`` is off.
    """
    with open_image(cluster, spec) as image:
        if _info(cluster, spec, image).primary:
            return "already primary"
        try:
            image.mirror_image_promote(force)
        except rbd.ImageBusy as exc:
            raise CephError(
                f"{cluster.access.name}: promote {spec}: the peer image is still primary "
                "or its demotion has not arrived yet (EBUSY)"
            ) from exc
        except rbd.Error as exc:
            raise CephError(
                f"{cluster.access.name}: promote {spec}: {describe_error(exc)}"
            ) from exc
    return "promoted (forced)" if force else "promoted"


def demote(cluster: Cluster, spec: ImageSpec) -> str:
    """Make the image non-primary on ``cluster``; a success if it already is."""
    with open_image(cluster, spec) as image:
        if not _info(cluster, spec, image).primary:
            return "already non-primary"
        ceph_call(f"{cluster.access.name}: demote {spec}", image.mirror_image_demote)
    return "demoted"


def resync(cluster: Cluster, spec: ImageSpec) -> str:
    """Flag the (non-primary) image for a full resync from the primary."""
    with open_image(cluster, spec) as image:
        if _info(cluster, spec, image).primary:
            raise CephError(
                f"{cluster.access.name}: {spec} is primary here; resync would "
                "discard it. Demote it first."
            )
        ceph_call(f"{cluster.access.name}: resync {spec}", image.mirror_image_resync)
    return "flagged for resync"


def mirror_snapshots(cluster: Cluster, spec: ImageSpec) -> list[MirrorSnapshot]:
    """Give the image's mirror snapshots, oldest first."""
    with open_image(cluster, spec, read_only=True) as image:
        return _mirror_snaps(cluster, spec, image)


def replica_view(
    cluster: Cluster, spec: ImageSpec
) -> tuple[MirrorInfo, list[MirrorSnapshot]] | None:
    """Give an image's mirror info and mirror snapshots from one open, or None if missing.

    Only the newest complete non-primary snapshot gets its timestamp read (each is a
    round trip); the others have timestamp 0. This is what ``status`` needs per disk.
    """
    try:
        with open_image(cluster, spec, read_only=True) as image:
            info = _info(cluster, spec, image)
            snaps = _mirror_snaps(cluster, spec, image, stamp_all=False)
    except NotFoundError:
        return None
    return info, snaps


def _mirror_snaps(
    cluster: Cluster, spec: ImageSpec, image: Any, *, stamp_all: bool = True
) -> list[MirrorSnapshot]:
    what = f"{cluster.access.name}: list snapshots of {spec}"
    raw = ceph_call(what, lambda: list(image.list_snaps()))
    newest_copy = max(
        (
            int(s["id"])
            for s in raw
            if s.get("namespace") == SNAP_NAMESPACE_MIRROR
            and int((s.get("mirror") or {}).get("state", 0)) >= 2
            and (s.get("mirror") or {}).get("complete")
        ),
        default=None,
    )
    out = []
    for snap in raw:
        if snap.get("namespace") != SNAP_NAMESPACE_MIRROR:
            continue
        mirror = snap.get("mirror") or {}
        state_number = int(mirror.get("state", 0))
        state = SNAP_STATES[state_number] if 0 <= state_number < 4 else str(state_number)
        timestamp = 0.0
        if stamp_all or int(snap["id"]) == newest_copy:
            try:
                timestamp = librbd_epoch(image.get_snap_timestamp(snap["id"]))
            except rbd.Error:
                timestamp = 0.0
        raw_primary_id = mirror.get("primary_snap_id")
        primary_snap_id = None
        if not state.startswith("primary") and raw_primary_id is not None:
            primary_snap_id = int(raw_primary_id)
        out.append(
            MirrorSnapshot(
                snap_id=int(snap["id"]),
                state=state,
                complete=bool(mirror.get("complete", False)),
                primary_snap_id=primary_snap_id,
                timestamp=timestamp,
            )
        )
    return sorted(out, key=lambda s: s.snap_id)


def librbd_epoch(stamp: dt.datetime) -> float:
    """Give the POSIX time of a datetime that python3-rbd returned.

    Up to 18.2 the bindings give naive datetimes in UTC (``utcfromtimestamp``); from
    20.2 on, aware ones in UTC. A naive one is read as UTC, an aware one as it says.
    """
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def image_status(cluster: Cluster, spec: ImageSpec) -> dict[str, Any]:
    """Give librbd's mirror status of the image on ``cluster`` (the daemon's last report)."""
    with open_image(cluster, spec, read_only=True) as image:
        status: dict[str, Any] = ceph_call(
            f"{cluster.access.name}: mirror status of {spec}", image.mirror_image_get_status
        )
        return status


def is_busy(exc: CephError) -> bool:
    """Tell whether a CephError came from EBUSY/EROFS, which a wait-and-retry may cure."""
    cause = exc.__cause__
    number = getattr(cause, "errno", None)
    return isinstance(cause, rbd.ImageBusy | rbd.ReadOnlyImage) or number in (
        errno.EBUSY,
        errno.EROFS,
    )


def chain(cluster: Cluster, spec: ImageSpec) -> tuple[MirrorInfo, list[MirrorSnapshot]] | None:
    """Give an image's mirror info and every mirror snapshot (each with its time), oldest
    first, from one open; None if the image does not exist. Raises CephError otherwise."""
    try:
        with open_image(cluster, spec, read_only=True) as image:
            return _info(cluster, spec, image), _mirror_snaps(cluster, spec, image)
    except NotFoundError:
        return None


# The pool-level override rbd-mirror reads (as the image's config) when it discards an
# image for a resync: the image goes to the pool's trash and stays there this long.
DELETE_DELAY_KEY = "conf_rbd_mirroring_delete_delay"


def pool_delete_delay(cluster: Cluster, spec: ImageSpec) -> int | None:
    """Give the pool's (namespace's) ``rbd_mirroring_delete_delay`` override, if set."""
    # Config overrides live in the pool's own metadata, whatever the namespace.
    ioctx = cluster.ioctx(spec.pool)
    what = f"{cluster.access.name}: pool metadata of {spec.pool}"
    try:
        value = rbd.RBD().pool_metadata_get(ioctx, DELETE_DELAY_KEY)
    except (KeyError, rbd.ObjectNotFound):  # python3-rbd 16.2 raises KeyError when unset
        return None
    except rbd.Error as exc:
        raise CephError(f"{what}: {describe_error(exc)}") from exc
    try:
        return int(value)
    except ValueError:
        return None


def keep_discarded(cluster: Cluster, spec: ImageSpec, seconds: int) -> int:
    """Make rbd-mirror keep an image it discards in the pool's trash at least ``seconds``
    (a pool-level config override; a longer one already set stays). Gives the delay.

    Raises CephError if the pool's metadata cannot be written.
    """
    current = pool_delete_delay(cluster, spec)
    if current is not None and current >= seconds:
        return current
    ioctx = cluster.ioctx(spec.pool)
    ceph_call(
        f"{cluster.access.name}: set {DELETE_DELAY_KEY} on pool {spec.pool}",
        lambda: rbd.RBD().pool_metadata_set(ioctx, DELETE_DELAY_KEY, str(seconds)),
    )
    return seconds


@dataclass(frozen=True)
class TrashEntry:
    """An image in a pool's trash."""

    image_id: str
    name: str
    source: str  # user, mirroring, migration, removing
    deleted_at: float
    kept_until: float


TRASH_SOURCES = {0: "user", 1: "mirroring", 2: "migration", 3: "removing"}


def _trash_source(raw: object) -> str:
    # python3-rbd 16.2 gives the name ("MIRRORING"); a number is read as librbd's enum.
    if isinstance(raw, int):
        return TRASH_SOURCES.get(raw, str(raw))
    return str(raw).lower()


def trash_entries(cluster: Cluster, spec: ImageSpec) -> list[TrashEntry]:
    """Give the trash entries of the image's pool (namespace) named like the image."""
    ioctx = cluster.ioctx(spec.pool, spec.namespace)
    raw = ceph_call(
        f"{cluster.access.name}: trash list of {spec.pool}",
        lambda: list(rbd.RBD().trash_list(ioctx)),
    )
    out = []
    for item in raw:
        if item.get("name") != spec.image:
            continue
        out.append(
            TrashEntry(
                image_id=str(item["id"]),
                name=str(item["name"]),
                source=_trash_source(item.get("source")),
                deleted_at=librbd_epoch(item["deletion_time"]),
                kept_until=librbd_epoch(item["deferment_end_time"]),
            )
        )
    return sorted(out, key=lambda e: e.deleted_at)
