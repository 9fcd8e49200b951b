"""Which site holds the newest data of an image: decided before a failback or resync changes
anything.

``failback`` and ``resync`` run on the site that returns (here, X) and make the peer (Y)
the source of every image: X's copy is demoted and, in split-brain, discarded. That is
right only if Y holds the newest data. The mirror snapshot chains of both sides say
whether it does (snapshot ids grow; a chain is read oldest first):

- a site that *took over* shows, while the pair is still in its chain, a non-primary
  snapshot (a copy of the other site's data) directly followed by a primary one (its
  promotion); the non-primary one names, in ``primary_snap_id``, the other site's
  snapshot it took over from. Measured on Ceph 16.2: the first primary snapshot after
  a promotion removes the non-primary ones, so after a forced failover the promoted
  chain holds primary snapshots only and the pair is usually gone. So a takeover is
  also known from this site's fence note (a forced failover here writes
  ``fence-<peer>.json``) and from the guest running here on its own copy;
- the *data age* of a side is the time of its newest primary mirror snapshot (what it
  wrote up to then, as far as mirroring knows).

Rules (X here, Y the peer):

- Y primary, X not: normal (the failover finished; X is a copy).
- Y not primary: refused; there is nothing to fail back from. If X is primary the data
  is here; if neither is, a failover stopped between demote and promote.
- both primary (a forced failover): refused when X took over (its fence note about Y,
  or a takeover in its chain) later than any takeover Y's chain shows, or when the
  guest runs here (its live copy is the newest data; failback.py asks only with
  ``--all``: a guest named on the command line may be stopped and resynced).
  Otherwise Y took over (only a forced failover makes two primaries, and it leaves its
  note at the site that forced):
  X's primary snapshots newer than what Y took over from (or, that unknown, than Y's
  oldest primary snapshot) are X's own later writes (split-brain): a resync discards
  them.
- a refusal can be overridden only by naming the guest with ``--discard-newer-here``.

:func:`decide` applies the rules to what was read (pure, unit-tested); :func:`check`
reads both sites, this site's fence note and (for ``--all``) its API, and refuses.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise

from pve_mirror.actions import fence
from pve_mirror.actions.context import SiteContext
from pve_mirror.actions.failover_select import GuestMove
from pve_mirror.ceph import mirror
from pve_mirror.ceph.cluster import Cluster
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.ceph.mirror import MirrorInfo, MirrorSnapshot
from pve_mirror.engine import journal
from pve_mirror.errors import ConfigError, PolicyError
from pve_mirror.pve import guest_ops, privileges
from pve_mirror.pve.storage import RbdStorage

OVERRIDE = "--discard-newer-here"
# How long rbd-mirror keeps (in the pool's trash) the copy a resync discards.
KEEP_DISCARDED_S = 7 * 24 * 3600

NORMAL = "normal"  # Y primary, X a copy
SPLIT = "split-brain"  # Y took over; X wrote after that: a resync discards X's writes
TAKEN_OVER = "taken-over"  # both primary, Y took over, X wrote nothing since
WRONG_SITE = "wrong-site"  # both primary and Y never took over (or X did later)
PEER_NOT_PRIMARY = "peer-not-primary"
NEITHER_PRIMARY = "neither-primary"
PEER_MISSING = "peer-missing"
REFUSALS = (WRONG_SITE, PEER_NOT_PRIMARY, NEITHER_PRIMARY, PEER_MISSING)


@dataclass(frozen=True)
class Side:
    """One site's image: its mirror info and mirror snapshots (None: no such image)."""

    site: str
    info: MirrorInfo | None
    snaps: Sequence[MirrorSnapshot] = ()
    fenced_other_at: float | None = None  # this site forced a failover over the other then
    running: bool = False  # the image's guest runs at this site (on this copy)

    @property
    def exists(self) -> bool:
        """Tell whether the site has the image."""
        return self.info is not None

    @property
    def primary(self) -> bool:
        """Tell whether the image is primary at this site."""
        return self.info is not None and self.info.primary

    @property
    def data_time(self) -> float | None:
        """Give the time of the newest primary mirror snapshot (the data's age), if any."""
        stamps = [s.timestamp for s in self.snaps if s.is_primary and s.timestamp > 0]
        return max(stamps) if stamps else None


@dataclass(frozen=True)
class Takeover:
    """A promotion seen in a chain: from which of the other site's snapshots, and when."""

    from_snap: int | None  # the other site's primary snapshot id it held when promoted
    at: float  # time of the first primary snapshot after it (the promotion)


def last_takeover(snaps: Sequence[MirrorSnapshot]) -> Takeover | None:
    """Give the chain's last takeover (a non-primary snapshot followed by a primary one).

    It took over from what its newest *complete* copy held: a forced promotion during a
    copy keeps only the data of the last complete one.
    """
    found = None
    held: int | None = None
    for before, after in pairwise(snaps):
        if not before.is_primary and before.complete:
            held = before.primary_snap_id
        if not before.is_primary and after.is_primary:
            found = Takeover(held, after.timestamp)
    return found


@dataclass(frozen=True)
class Verdict:
    """What the chains say about one image: who holds the newest data, what a resync loses."""

    image: str
    kind: str  # one of the constants above
    here: Side
    peer: Side
    newer_here: tuple[int, ...] = ()  # X's primary snapshot ids after Y's takeover
    why: str = ""  # what showed a wrong site

    @property
    def refused(self) -> bool:
        """Tell whether a failback/resync must not make the peer's copy win."""
        return self.kind in REFUSALS

    @property
    def discards(self) -> bool:
        """Tell whether a resync would discard data only this site holds."""
        return self.kind in (SPLIT, WRONG_SITE)

    def ages(self, now: float | None = None) -> str:
        """Give ``site-a: data of <time> (<age> old), site-b: ...`` for messages."""
        return f"{_age(self.here, now)}, {_age(self.peer, now)}"

    def explain(self, fix: str = "") -> str:
        """Give one line saying what the chains show and what to do."""
        x, y = self.here.site, self.peer.site
        what = {
            NORMAL: f"{y} is primary and {x} holds a copy",
            TAKEN_OVER: f"{y} took over (forced failover) and {x} wrote nothing since",
            SPLIT: f"{y} took over but {x} has {len(self.newer_here)} newer mirror "
            f"snapshot(s): a resync discards what {x} wrote after the failover",
            WRONG_SITE: f"both sites are primary and {self.why}: {x} holds the newest data; "
            f"failback belongs on {y}",
            PEER_NOT_PRIMARY: f"{y} is not primary and {x} is: the data is here, there is "
            f"nothing to fail back from {y}; to move the guest to {y} run "
            f"'pve-mirror failover' on {y}",
            NEITHER_PRIMARY: "neither site is primary: a failover stopped between demote "
            "and promote; rerun that 'pve-mirror failover' on the site it targeted",
            PEER_MISSING: f"{y} has no such image",
        }[self.kind]
        return f"{self.image}: {what} ({self.ages()}){fix}"


def _age(side: Side, now: float | None) -> str:
    stamp = side.data_time
    if stamp is None:
        return f"{side.site}: no primary snapshot"
    when = dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    age = max(0.0, (time.time() if now is None else now) - stamp)
    return f"{side.site}: data of {when} ({age:.0f} s old)"


def decide(image: str, here: Side, peer: Side) -> Verdict:
    """Give the verdict for one image from both sides' state (pure: reads nothing)."""
    if not peer.exists:
        return Verdict(image, PEER_MISSING, here, peer)
    if not peer.primary:
        kind = PEER_NOT_PRIMARY if here.primary else NEITHER_PRIMARY
        return Verdict(image, kind, here, peer)
    if not here.primary:
        return Verdict(image, NORMAL, here, peer)
    theirs, ours = last_takeover(peer.snaps), last_takeover(here.snaps)
    ours_at = max(
        [t for t in (ours.at if ours else None, here.fenced_other_at) if t is not None],
        default=None,
    )
    reasons = []
    if ours_at is not None and (theirs is None or ours_at >= theirs.at):
        how = "forced a failover" if here.fenced_other_at is not None else "took over"
        reasons.append(f"{here.site} {how} from {peer.site} (and {peer.site} did not since)")
    if here.running:
        reasons.append(f"the guest runs at {here.site} on its copy")
    why = "; ".join(reasons)
    if why:
        return Verdict(image, WRONG_SITE, here, peer, why=why)
    return Verdict(image, SPLIT if (newer := _newer(here, peer, theirs)) else TAKEN_OVER,
                   here, peer, newer)  # fmt: skip


def _newer(here: Side, peer: Side, theirs: Takeover | None) -> tuple[int, ...]:
    """Give X's primary snapshots the peer's takeover does not hold."""
    if theirs is not None and theirs.from_snap is not None:
        start = theirs.from_snap
        return tuple(s.snap_id for s in here.snaps if s.is_primary and s.snap_id > start)
    # The pair is gone: the peer's oldest primary snapshot bounds its promotion.
    stamps = [s.timestamp for s in peer.snaps if s.is_primary and s.timestamp > 0]
    since = min(stamps, default=0.0)
    return tuple(s.snap_id for s in here.snaps if s.is_primary and s.timestamp >= since)


def refusal(verdicts: Sequence[Verdict], action: str, override: str) -> str:
    """Give the one-line refusal naming every refused image, its data ages and the way out."""
    parts = [v.explain() for v in verdicts]
    return (
        f"{action} refused, nothing changed: "
        + " | ".join(parts)
        + f". If the older copy must win, name the guest(s) with {override}"
    )


# --- reading both sites (what failback.py and resync call before planning) -------------


def read_side(site: str, cluster: Cluster, spec: ImageSpec) -> Side:
    """Give one site's state of the image for the authority rules (CephError if unreadable)."""
    found = mirror.chain(cluster, spec)
    if found is None:
        return Side(site, None)
    return Side(site, found[0], tuple(found[1]))


def fenced_at(ctx: SiteContext) -> float | None:
    """Give when this site forced a failover over the peer (its fence note), if it did.

    A note written by another site (``by``) is no evidence of this site's takeover; one
    that cannot be read counts (fail closed: a failback is then refused, not allowed).
    """
    path = fence.note_path(ctx.root.path, ctx.site.peer().name)
    try:
        note = json.loads(path.read_text(encoding="utf-8"))
        if note.get("by", ctx.site.local_name) != ctx.site.local_name:
            return None
        return float(note["at"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return time.time()


def runs_here(ctx: SiteContext, move: GuestMove) -> bool:
    """Tell whether the guest runs (or is paused, ...) at this site.

    Raises PveAuthError when this site's token cannot see the guest: "not listed" then
    proves nothing.
    """
    api = ctx.local_api()
    kind, vmid = move.staged.kind, move.staged.vmid
    guest = guest_ops.find_guest(api, kind, vmid)
    if guest is None:
        privileges.require(api, privileges.guest_needs(vmid)[:1],
                           f"{ctx.site.local_name}'s API token")  # fmt: skip
        return False
    return not guest_ops.live_status(api, guest.node, kind, vmid).stopped


def judge(ctx: SiteContext, moves: list[GuestMove], named: bool) -> list[tuple[GuestMove, Verdict]]:
    """Give the authority verdict of every image of ``moves`` (reads both sites).

    Unless the guests were ``named``, a guest that runs here on an image primary at both
    sites counts against the peer (this site's API is asked): ``--all`` never stops a
    live copy to discard it; naming the guest does (e.g. one left paused by an I/O
    error beside the copy a forced failover promoted).
    """
    storages = ctx.root.storage_config()
    here, there = ctx.site.local_name, ctx.site.peer().name
    peer = ctx.peer()
    note = fenced_at(ctx)
    out = []
    for move in moves:
        running: bool | None = None
        for storeid, spec in move.images:
            storage = storages.get(storeid)
            if not isinstance(storage, RbdStorage):
                raise ConfigError(f"storage {storeid} is not an RBD storage here")
            local = read_side(here, ctx.local(storage), spec)
            remote = read_side(there, peer, spec)
            if local.primary and remote.primary:
                if running is None:
                    running = not named and runs_here(ctx, move)
                local = replace(local, fenced_other_at=note, running=running)
            out.append((move, decide(str(spec), local, remote)))
    return out


def _demoted_before(ctx: SiteContext) -> set[str]:
    """Give the images an unfinished failback/resync here already demoted (a rerun
    continues it: the state it left, e.g. neither site primary, is its own doing)."""
    out: set[str] = set()
    for found in journal.unfinished(ctx.root.path / "pve-mirror" / "journal"):
        if found.stem.rsplit("-", 1)[0] in ("failback", "resync"):
            out |= {s.split(":", 1)[1] for s in found.done_steps() if s.startswith("demote-local:")}
    return out


def check(
    ctx: SiteContext, moves: list[GuestMove], named: bool, override: bool, action: str
) -> list[str]:
    """Refuse (PolicyError) what would make an older copy win; give the plan's notes.

    ``named``: the guests were named on the command line; ``override``: the admin gave
    ``--discard-newer-here`` (counts only with ``named``).
    """
    verdicts = judge(ctx, moves, named)
    resumed = _demoted_before(ctx)
    notes, refused = [], []
    for move, verdict in verdicts:
        if verdict.image in resumed and verdict.kind != WRONG_SITE:
            notes.append(f"{move.label} {verdict.image}: continuing an unfinished {action}")
            continue
        if verdict.kind == WRONG_SITE and override and named:
            notes.append(
                f"{move.label} {verdict.explain()}: {OVERRIDE} given, the older copy at "
                f"{ctx.site.peer().name} wins and this site's data is discarded"
            )
        elif verdict.refused:
            refused.append(verdict)
        elif verdict.discards:
            notes.append(f"{move.label} {verdict.explain()}")
    if refused:
        peer = ctx.site.peer().name
        message = refusal(refused, action, f"{OVERRIDE} (never with --all)")
        if fenced_at(ctx) is not None:
            message += (
                f"; this site promoted by force and fenced {peer} "
                f"({fence.note_path(ctx.root.path, peer)}): run {action} on {peer}"
            )
        raise PolicyError(message)
    kinds = Counter(v.kind for _m, v in verdicts)
    counts = ", ".join(f"{kind}: {count}" for kind, count in sorted(kinds.items()))
    notes.insert(
        0,
        f"authority of {len(verdicts)} image(s), from both sites' mirror snapshots "
        f"({ctx.site.peer().name} must hold the newest data): {counts}",
    )
    if any(v.discards for _m, v in verdicts):
        notes.append(
            f"a discarded copy stays in its pool's trash on {ctx.site.local_name} for "
            f"{KEEP_DISCARDED_S // 86400} days at least (rbd trash ls --all <pool>)"
        )
    return notes
