"""``site peer-lost`` and ``site unfence``: the admin's side of fencing.

``site peer-lost`` writes the dated declaration that the peer is down or cut off for
good (``pve_mirror.actions.fence``), which lets the hook start guests primary here
while the peer cannot be asked. It is refused while the peer's Ceph answers: then the
hook asks the peer and needs no declaration.

``site unfence`` removes the fence note and the declaration, but only once the peer
answers and no image of a fenced guest is primary at both sites (the peer was failed
back or demoted). ``--risk-two-primaries`` removes them without that proof.
"""

from __future__ import annotations

import re
from typing import Any

from pve_mirror.actions import fence
from pve_mirror.actions.context import SiteContext
from pve_mirror.actions.preflight import SOURCE_PROBE_S
from pve_mirror.ceph.cluster import Cluster, connected
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.ceph.mirror import mirror_info
from pve_mirror.errors import ConfigError, NotFoundError, PolicyError, PveMirrorError
from pve_mirror.pve.storage import RbdStorage

_LABEL = re.compile(r"^(vm|ct)[ :](\d+)$", re.IGNORECASE)


def peer_lost(ctx: SiteContext, *, yes: bool, dry_run: bool) -> dict[str, Any]:
    """Declare the peer lost: give what was (or, with ``dry_run``, would be) written.

    Raises PolicyError while the peer's Ceph answers, or without ``yes``.
    """
    peer, local = ctx.site.peer().name, ctx.site.local_name
    why = _peer_silent(ctx)
    if why is None:
        raise PolicyError(
            f"{peer}'s Ceph answers: the hook asks it before every start, there is nothing "
            "to declare"
        )
    path = fence.lost_path(ctx.root.path, peer)
    data: dict[str, Any] = {"peer": peer, "by": local, "why": why, "path": str(path)}
    if dry_run:
        return {**data, "written": False}
    if not yes:
        raise PolicyError(
            f"{peer} cannot be asked ({why}). Declaring it lost lets guests whose disks are "
            f"primary here start although {peer} may run them too: make sure it is down or "
            "cut off for good, then rerun with --yes"
        )
    fence.write_lost(ctx.root.path, peer, local, why)
    return {**data, "written": True}


def _peer_silent(ctx: SiteContext) -> str | None:
    """Give why the peer's Ceph cannot be asked, or None when it answers."""
    try:
        access = ctx.site.peer().ceph_access(ctx.root.path).with_mount_timeout(SOURCE_PROBE_S)
        with connected(access, timeout=SOURCE_PROBE_S):
            return None
    except PveMirrorError as exc:
        return str(exc)


def unfence(ctx: SiteContext, *, risk: bool, dry_run: bool) -> dict[str, Any]:
    """Remove this site's fence note and peer-lost declaration about the peer; give
    what was checked and removed (with ``dry_run``: what would be).

    Raises PolicyError, unless ``risk``, when the peer cannot be asked or an image of
    a fenced guest is still primary at both sites (or cannot be checked).
    """
    peer, local = ctx.site.peer().name, ctx.site.local_name
    root = ctx.root.path
    warnings: list[str] = []
    note = fence.read_fence(root, peer, local, warnings)
    files = [p for p in (fence.note_path(root, peer), fence.lost_path(root, peer)) if p.exists()]
    data: dict[str, Any] = {
        "peer": peer,
        "fence_note": None if note is None else {"by": note.by, "since": note.since()},
        "checked": [],
        "problems": [],
        "removed": [],
        "dry_run": dry_run,
        "warnings": warnings,
    }
    if not files:
        return data
    try:
        peer_cluster = ctx.peer()
    except PveMirrorError as exc:
        data["problems"].append(f"{peer} cannot be asked ({exc})")
    else:
        for label in note.guests if note is not None else ():
            recorded = note.image_pairs(label) if note is not None else []
            _check_guest(ctx, peer_cluster, label, data, recorded)
    if data["problems"] and not risk:
        raise PolicyError(
            f"not unfencing {peer}: {'; '.join(data['problems'])}. Fail it back first "
            f"('pve-mirror failback' on {peer}), or add --risk-two-primaries if you have "
            "made sure yourself that it does not run these guests"
        )
    for path in files:
        if not dry_run:
            path.unlink(missing_ok=True)
        data["removed"].append(str(path))
    return data


def _check_guest(
    ctx: SiteContext,
    peer_cluster: Cluster,
    label: str,
    data: dict[str, Any],
    recorded: list[tuple[str, str]],
) -> None:
    """Add to ``data`` every image of guest ``label`` that is primary at both sites, or
    why the guest cannot be checked. Its images: from its config here, else (it has
    left, e.g. failed back) the ``recorded`` ones of the fence note."""
    match = _LABEL.match(label.strip())
    if match is None:
        data["problems"].append(f"{label}: not a guest label")
        return
    try:
        for storage, spec in _images(ctx, match, recorded):
            here = mirror_info(ctx.local(storage), spec)
            try:
                there = mirror_info(peer_cluster, spec)
            except NotFoundError:
                there = None
            both = here.primary and there is not None and there.primary
            data["checked"].append({"guest": label, "image": str(spec), "two_primaries": both})
            if both:
                data["problems"].append(f"{label}: {spec} is primary at both sites")
    except PveMirrorError as exc:
        data["problems"].append(f"{label}: cannot check ({exc})")


def _images(
    ctx: SiteContext, match: re.Match[str], recorded: list[tuple[str, str]]
) -> list[tuple[RbdStorage, ImageSpec]]:
    """Give the guest's mirrored images: from its config here, else from ``recorded``.

    Raises NotFoundError if neither names them, ConfigError for a recorded storage that
    is not RBD here.
    """
    try:
        ref = ctx.guests(match.group(1).lower(), [int(match.group(2))])[0]
    except NotFoundError:
        if not recorded:
            raise
    else:
        disks, _others = ctx.disks(ref)
        return [(disk.storage, disk.spec) for disk in disks]
    storages = ctx.root.storage_config()
    out = []
    for storeid, image in recorded:
        storage = storages.get(storeid)
        if not isinstance(storage, RbdStorage):
            raise ConfigError(f"storage {storeid} of {image} is not an RBD storage here")
        out.append((storage, ImageSpec.parse(image)))
    return out


def render_unfence(data: dict[str, Any]) -> str:
    """Give the text form of :func:`unfence`'s result."""
    if not data["removed"]:
        return f"No fence note or peer-lost note about {data['peer']}: nothing to remove."
    verb = "Would remove" if data["dry_run"] else "Removed"
    lines = [f"{verb} {path}" for path in data["removed"]]
    lines += [f"  {c['guest']} {c['image']}: one primary" for c in data["checked"]]
    lines += [f"  warning: {p} (--risk-two-primaries)" for p in data["problems"]]
    return "\n".join(lines)


def render_peer_lost(data: dict[str, Any]) -> str:
    """Give the text form of :func:`peer_lost`'s result."""
    if not data["written"]:
        return f"Would declare {data['peer']} lost in {data['path']} ({data['why']})."
    return (
        f"Declared {data['peer']} lost in {data['path']} ({data['why']}); removed by "
        "'pve-mirror site unfence' or when it answers again"
    )
