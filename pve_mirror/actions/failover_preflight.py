"""The failover's preflight: everything that can be checked before the first change.

A planned failover stops the guests at the source first; a refusal after that leaves
them down at both sites. So, at plan time (``--dry-run`` shows the results as
notes), for every guest at once:

- **its VMID here** is free, or taken by this guest's own earlier config (a leftover
  of a previous move: the same type, and every mirrored disk one of the images that
  now come over). Anything else is an unrelated guest and is never moved aside. A
  leftover whose disk is primary here is a live guest (except for a failback, whose
  earlier steps stop and demote it);
- **its images** have a copy here: the storage is RBD here, the image exists and is
  mirrored, and (snapshot mode) holds a complete copy (a planned failover also takes a
  copy rbd-mirror is still creating from a mirrored primary: it waits for it); for a planned
  failover also no split-brain. (Whether this site's rbd-mirror reports the image
  is not asked: Ceph 16.2 keeps no local status of a non-primary snapshot-mode image,
  "status not found"; a daemon that is down makes the planned wait time out instead.)
- **its hookscript** snippet is listed by its storage on the node it lands on.

A check that cannot be made (an API or Ceph error) refuses: fail closed.
"""

from __future__ import annotations

from pathlib import Path

from pve_mirror.actions.context import SiteContext
from pve_mirror.actions.failover_select import GuestMove
from pve_mirror.actions.staging import StagedSet
from pve_mirror.actions.staging_install import existing_configs, render_for_install
from pve_mirror.ceph import mirror
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.errors import PolicyError, PveMirrorError, listing
from pve_mirror.pve.disks import resolve_guest_disks
from pve_mirror.pve.root import GuestRef, GuestType
from pve_mirror.pve.storage import RbdStorage


def check_moves(
    ctx: SiteContext,
    moves: list[GuestMove],
    staged_set: StagedSet,
    *,
    forced: bool,
    returning: bool = False,
) -> list[str]:
    """Give one note per check passed; raise PolicyError naming every refusal (all guests).

    ``returning``: the failback's failover part, after its own stop and demote steps.
    """
    problems: list[str] = []
    notes: list[str] = []
    for move in moves:
        found = _check_vmid(ctx, move, staged_set, returning)
        if not returning:  # a failback resyncs and verifies replication in its own steps
            found += _check_images(ctx, move, forced)
        found += _check_hookscript(ctx, move)
        problems += [f"{move.label}: {p}" for p in found]
    if problems:
        raise PolicyError(
            f"preflight refused {len(problems)} thing(s), nothing was changed: " + listing(problems)
        )
    images = sum(len(m.images) for m in moves)
    notes.append(
        f"preflight passed: {len(moves)} guest(s), VMIDs free here or their own old "
        f"config, {images} image(s) with a copy here" + ("" if forced else " and replicating")
    )
    return notes


def _check_vmid(
    ctx: SiteContext, move: GuestMove, staged_set: StagedSet, returning: bool
) -> list[str]:
    """Give why the guest's VMID cannot be used here (none: free or its own leftover)."""
    vmid = move.staged.vmid
    try:
        wanted = render_for_install(staged_set.guest(vmid), staged_set.storage_map)
    except PveMirrorError as exc:
        return [str(exc)]
    problems = []
    for path in existing_configs(ctx.root.path, vmid):
        try:
            if path.read_bytes() == wanted:
                continue  # installed by an earlier run of this failover
            problems += leftover_problems(ctx, path, move, live_check=not returning)
        except (OSError, PveMirrorError) as exc:
            problems.append(f"cannot check {path}: {exc}")
    return problems


def leftover_problems(
    ctx: SiteContext, path: Path, move: GuestMove, *, live_check: bool = True
) -> list[str]:
    """Give why the config at ``path`` is not ``move``'s own leftover that may be set aside.

    Its own leftover: the same guest type, at least one mirrored disk, and every mirrored
    disk one of the images the move brings; with ``live_check`` none of them primary
    here (then it is a live guest). Raises PveMirrorError if Ceph cannot be asked.
    """
    kind: GuestType = "qemu" if path.parent.name == "qemu-server" else "lxc"
    node = path.parent.parent.name
    word = "VM" if kind == "qemu" else "CT"
    if kind != move.staged.kind:
        return [
            f"VMID {move.staged.vmid} is used here by an unrelated {word} ({path}): "
            "refusing to move it; give the guest a free VMID or remove that one"
        ]
    ref = GuestRef(move.staged.vmid, kind, node, path)
    storages = ctx.root.storage_config()
    incoming = {spec for _storage, spec in move.images}
    mirrored: list[tuple[str, ImageSpec, RbdStorage]] = []
    foreign: list[str] = []
    for disk in resolve_guest_disks(ref, ctx.root.read_guest(ref), storages, strict=False):
        storage = storages.get(disk.storage or "")
        if disk.mirrorable and disk.spec is not None and isinstance(storage, RbdStorage):
            if disk.spec in incoming:
                mirrored.append((disk.key, disk.spec, storage))
            else:
                foreign.append(f"{disk.key} ({disk.spec})")
        elif disk.role not in ("cdrom", "cloudinit") and disk.volid not in (None, "none"):
            foreign.append(f"{disk.key} ({disk.volid})")
    if foreign or not mirrored:
        has = f"its disks {', '.join(foreign)} are" if foreign else "it has no disk that is"
        return [
            f"VMID {move.staged.vmid} is used here by an unrelated {word} ({path}): {has} "
            "not among the images that come over; refusing to move it aside. Give the "
            "guest a free VMID or remove that one"
        ]
    if not live_check:
        return []
    live = [
        f"{key} ({spec})"
        for key, spec, storage in mirrored
        if mirror.image_exists(ctx.local(storage), spec)
        and mirror.mirror_info(ctx.local(storage), spec).primary
    ]
    if live:
        return [
            f"already exists here ({path}) and its disk {', '.join(live)} is primary here: "
            "refusing to replace a live guest"
        ]
    return []


def _check_images(ctx: SiteContext, move: GuestMove, forced: bool) -> list[str]:
    """Give why an image of the guest has no usable copy here."""
    storages = ctx.root.storage_config()
    here = ctx.site.local_name
    problems = []
    for storeid, spec in move.images:
        storage = storages.get(storeid)
        if not isinstance(storage, RbdStorage):
            problems.append(f"storage {storeid} of {spec} is not an RBD storage here")
            continue
        try:
            problems += _image_problems(ctx, storage, spec, here, forced)
        except PveMirrorError as exc:
            problems.append(f"cannot check {spec} here: {exc}")
    return problems


def _image_problems(
    ctx: SiteContext, storage: RbdStorage, spec: ImageSpec, here: str, forced: bool
) -> list[str]:
    cluster = ctx.local(storage)
    if not mirror.image_exists(cluster, spec):
        if not forced and _mirrored_from_peer(ctx, spec):
            return []  # rbd-mirror is creating the copy; the final snapshot waits for it
        return [f"{spec} has no copy at {here} (is it enabled and replicated?)"]
    info = mirror.mirror_info(cluster, spec)
    if info.state != "enabled":
        # librbd's RBD_MIRROR_IMAGE_CREATING (3): rbd-mirror is still creating the copy
        creating = info.state in ("3", "creating")
        if creating and not forced and _mirrored_from_peer(ctx, spec):
            return []
        state = "being created" if creating else info.state
        return [f"{spec} is not mirrored at {here} yet (mirroring {state})"]
    if info.primary:
        return []  # promoted by an earlier run of this failover
    if info.mode == "snapshot":
        snaps = [s for s in mirror.mirror_snapshots(cluster, spec) if not s.is_primary]
        if not any(s.complete for s in snaps) and (forced or not _mirrored_from_peer(ctx, spec)):
            return [f"{spec} holds no complete copy at {here} yet"]
    if forced:
        return []
    status = mirror.image_status(cluster, spec)
    description = str(status.get("description", ""))
    if "split-brain" in description:
        return [f"{spec} is in split-brain at {here}: resync it first"]
    return []


def _mirrored_from_peer(ctx: SiteContext, spec: ImageSpec) -> bool:
    """Tell whether the peer's image is mirrored and primary (its copy here will come)."""
    info = mirror.mirror_info(ctx.peer(), spec)
    return info.state == "enabled" and info.primary


def _check_hookscript(ctx: SiteContext, move: GuestMove) -> list[str]:
    """Give why the guest's hookscript is not where it will start (PVE refuses the start)."""
    config = move.staged.config
    volid = config.main.get("hookscript") if config is not None else None
    if not volid:
        return []
    storeid = volid.partition(":")[0]
    try:
        listed = ctx.local_api().get(
            f"/nodes/{move.node}/storage/{storeid}/content", content="snippets"
        )
    except PveMirrorError as exc:
        return [f"cannot check its hookscript {volid} on {move.node}: {exc}"]
    if not any(item.get("volid") == volid for item in listed or []):
        return [
            f"its hookscript {volid} is not on node {move.node} "
            "(run 'pve-mirror hook install' on this site)"
        ]
    return []
