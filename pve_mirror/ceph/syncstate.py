"""How far a non-primary copy is behind, decided from mirror snapshots, not status strings.

rbd-mirror refreshes image status only every 30 s, but mirror snapshots are exact:
the non-primary side's newest *complete* snapshot names (``primary_snap_id``) the
primary snapshot whose data it now holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pve_mirror.ceph.mirror import MirrorSnapshot


@dataclass(frozen=True)
class SyncState:
    """The replication position of one image pair."""

    newest_primary: int | None  # newest mirror snapshot id on the primary
    synced_primary: int | None  # primary snapshot id the peer holds completely
    synced_at: float | None  # when that primary snapshot was taken (the data's age)
    copying: bool  # the peer has an incomplete snapshot: a copy is under way

    @property
    def in_sync(self) -> bool:
        """Tell whether the peer holds the newest primary mirror snapshot."""
        return self.newest_primary is not None and self.synced_primary == self.newest_primary

    def rpo_seconds(self, now: float) -> float | None:
        """Give the age of the data the peer holds, or None if it holds nothing yet."""
        return None if self.synced_at is None else max(0.0, now - self.synced_at)


def sync_state(primary: Sequence[MirrorSnapshot], peer: Sequence[MirrorSnapshot]) -> SyncState:
    """Give the replication position from both sides' mirror snapshots (oldest first)."""
    primary_snaps = [s for s in primary if s.is_primary]
    newest = primary_snaps[-1].snap_id if primary_snaps else None
    complete = [s for s in peer if not s.is_primary and s.complete]
    copying = any(not s.is_primary and not s.complete for s in peer)
    if not complete:
        return SyncState(newest, None, None, copying)
    held = complete[-1]
    taken = {s.snap_id: s.timestamp for s in primary_snaps}
    # The primary prunes old mirror snapshots; then the copy's own time is the best bound.
    synced_at = taken.get(held.primary_snap_id or -1, held.timestamp)
    return SyncState(newest, held.primary_snap_id, synced_at, copying)
