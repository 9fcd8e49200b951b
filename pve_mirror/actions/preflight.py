"""What a failover (and the failback that ends in one) checks before it changes anything.

- The source site: a forced failover is refused while the source answers, a planned
  one when it does not. It fails closed: only a connect that timed out, was refused
  or found no route counts as down. An API that answers 401/403 answers: it is an
  error to fix (the token), never a site that is down; a TLS failure, a missing token,
  conf or keyring file, a Ceph auth refusal, a 5xx or an unreadable answer refuse the
  forced failover with their cause (they prove nothing about the site being down).
- The API tokens: the peer's token must have VM.Audit and VM.PowerMgmt on every guest
  it stops (pve_mirror.pve.privileges), this site's token (if the local API is https)
  the same on the guests it starts. A token with privilege separation and no ACLs
  sees no guest at all; without this check its empty answer would read as "the guest
  is not there".
- Config locks (the policy, see docs/admin-guide.md). A guest config carries
  ``lock: <what>`` while PVE works on it; a start refuses it ("VM is locked
  (backup)") and only root@pam may override that (skiplock). So:

  * planned: a guest that is locked *now* on the source is refused (its stop would
    fail too): "wait for the backup to end, or unlock it";
  * ``lock: backup`` in a *staged* config means vzdump ran on the source while the
    config was synced; the lock belongs to that job, not to the copy. The config is
    installed without it, with a note in the plan;
  * any other lock in a staged config (migrate, snapshot, rollback, clone, create,
    suspended, disk, ...) means the config may not match the disks: the failover is
    refused naming the lock; unlock on the source and sync again (or, with the source
    gone, remove the line from the staged file by hand).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pve_mirror.ceph.cluster import CephUnreachableError, connected
from pve_mirror.errors import PolicyError, PveMirrorError
from pve_mirror.pve import guest_ops, privileges
from pve_mirror.pve.api import PveAuthError, PveshApi, PveUnreachableError

if TYPE_CHECKING:
    from pve_mirror.actions.context import SiteContext
    from pve_mirror.actions.staging import StagedGuest

# How long the source's Ceph may take to answer before it counts as down.
SOURCE_PROBE_S = 5
# Locks a staged config may carry that are cleared when it is installed.
CLEARED_LOCKS = ("backup",)


def staged_lock(staged: StagedGuest) -> str | None:
    """Give the ``lock:`` of a staged config's current section, if any."""
    if staged.config is None:
        return None
    return staged.config.main.get("lock")


def clear_stale_lock(staged: StagedGuest) -> str | None:
    """Drop a ``lock: backup`` from the staged config (in memory); give a note if it did."""
    lock = staged_lock(staged)
    if lock not in CLEARED_LOCKS or staged.config is None:
        return None
    staged.config.delete("lock")
    return (
        f"{staged.label}: its config was synced during a backup on the source (lock: {lock}); "
        "installed without that lock"
    )


def check_staged_locks(staged: list[StagedGuest], source: str) -> list[str]:
    """Give the plan notes for cleared locks; raise PolicyError for any other lock."""
    notes = []
    for guest in staged:
        lock = staged_lock(guest)
        if lock is None:
            continue
        if lock in CLEARED_LOCKS:
            notes.append(
                f"{guest.label}: its config was synced during a backup on {source} "
                f"(lock: {lock}); it is installed without that lock"
            )
            continue
        raise PolicyError(
            f"{guest.label}: its config staged by {source} is locked ({lock}): an operation "
            f"was under way there when it was synced. Unlock it on {source} "
            f"({'qm' if guest.kind == 'qemu' else 'pct'} unlock {guest.vmid}) and run "
            f"'pve-mirror sync' there, or, with {source} gone, remove the 'lock:' line "
            f"from {guest.path} yourself"
        )
    return notes


@dataclass
class SourceProbe:
    """What probing the source's API and Ceph found.

    ``answers``: which of them answered. ``doubts``: why one of them neither answered
    nor counts as down (a TLS failure, a missing file, a refused key, an HTTP error):
    only a timeout, a refused connection or no route counts as down.
    """

    answers: list[str] = field(default_factory=list)
    doubts: list[str] = field(default_factory=list)


def check_source(ctx: SiteContext, forced: bool, yes_i_know: bool) -> None:
    """Refuse a forced failover unless the source is down, and a planned one when it
    does not answer.

    Down means both its API and Ceph timed out, refused or had no route; any other
    failure to ask them is a doubt that refuses the forced failover too (unless
    ``yes_i_know``: the admin has fenced it). Raises PolicyError for a refusal,
    PveAuthError when the source's API refuses our token (it is up).
    """
    source = ctx.site.peer().name
    probe = source_answers(ctx)
    answers = probe.answers
    if forced and answers and not yes_i_know:
        also = f" (and cannot be asked: {'; '.join(probe.doubts)})" if probe.doubts else ""
        raise PolicyError(
            f"{source} still answers ({', '.join(answers)}){also}: a forced failover would "
            "leave two primaries. Use --planned, or add --yes-i-know if it is fenced"
        )
    if forced and probe.doubts and not yes_i_know:
        raise PolicyError(
            f"cannot tell that {source} is down ({'; '.join(probe.doubts)}): only a timeout, "
            "a refused connection or no route counts as down. Fix that, or add --yes-i-know "
            "if it is fenced"
        )
    if not forced and len(answers) < 2:
        if probe.doubts:
            raise PolicyError(
                f"cannot ask {source} ({'; '.join(probe.doubts)}): a planned failover needs "
                "both sites"
            )
        missing = {"API", "Ceph"} - set(answers)
        raise PolicyError(
            f"{source} does not answer ({', '.join(sorted(missing))}): a planned failover "
            "needs both sites; use --force if it is down"
        )


def source_answers(ctx: SiteContext) -> SourceProbe:
    """Give which of the source's API and Ceph answer (short timeouts), and why the
    others could not be asked when that does not mean they are down.

    Raises PveAuthError when the API answers with 401/403: that site is up.
    """
    probe = SourceProbe()
    try:
        ctx.peer_api().get("/version")
        probe.answers.append("API")
    except PveAuthError as exc:
        raise PveAuthError(f"{exc}: the API answers, so {ctx.site.peer().name} is up") from exc
    except PveUnreachableError:
        pass
    except PveMirrorError as exc:
        probe.doubts.append(f"API: {exc}")
    try:
        probe_access = ctx.site.peer().ceph_access(ctx.root.path)
        probe_access = probe_access.with_mount_timeout(SOURCE_PROBE_S)
        with connected(probe_access, timeout=SOURCE_PROBE_S):
            probe.answers.append("Ceph")
    except CephUnreachableError:
        pass
    except PveMirrorError as exc:
        probe.doubts.append(f"Ceph: {exc}")
    return probe


def check_planned_source(ctx: SiteContext, guests: Sequence[tuple[str, int]]) -> None:
    """Check, for a planned failover, that the peer's token may stop every guest and that
    no guest is locked on the source right now.

    Raises PveAuthError naming the missing privileges, PolicyError naming a lock.
    """
    api = ctx.peer_api()
    source = ctx.site.peer().name
    needs = [n for _kind, vmid in guests for n in privileges.guest_needs(vmid)]
    privileges.require(api, needs, f"{source}'s API token")
    listed = {(g.kind, g.vmid): g for g in guest_ops.cluster_guests(api)}
    for kind, vmid in guests:
        found = listed.get((kind, vmid))
        if found is not None and found.lock:
            word = "VM" if kind == "qemu" else "CT"
            raise PolicyError(
                f"{word} {vmid} is locked ({found.lock}) on {source}: its shutdown would fail. "
                f"Wait until that ends ('{found.lock}' is PVE's lock), or unlock it there"
            )


def check_local_api(ctx: SiteContext, guests: Sequence[tuple[str, int]]) -> None:
    """Check that this site's API may start (and stop) the guests; pvesh is root and may.

    Raises PveAuthError naming the missing privileges, PveApiError if it cannot ask.
    """
    api = ctx.local_api()
    if isinstance(api, PveshApi):
        return
    needs = [n for _kind, vmid in guests for n in privileges.guest_needs(vmid)]
    privileges.require(api, needs, f"{ctx.site.local_name}'s API token")
