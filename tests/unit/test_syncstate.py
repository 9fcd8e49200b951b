"""Sync state from mirror snapshots: in sync, behind, copying, nothing yet."""

from pve_mirror.ceph.mirror import MirrorSnapshot
from pve_mirror.ceph.syncstate import sync_state


def _p(snap_id: int, at: float) -> MirrorSnapshot:
    return MirrorSnapshot(snap_id, "primary", True, None, at)


def _np(snap_id: int, primary_id: int, at: float, complete: bool = True) -> MirrorSnapshot:
    return MirrorSnapshot(snap_id, "non-primary", complete, primary_id, at)


def test_in_sync_uses_the_primary_snapshot_time() -> None:
    state = sync_state([_p(4, 100.0), _p(9, 200.0)], [_np(3, 4, 101.0), _np(7, 9, 201.0)])
    assert state.in_sync and not state.copying
    assert state.rpo_seconds(260.0) == 60.0


def test_behind_and_copying() -> None:
    state = sync_state([_p(4, 100.0), _p(9, 200.0)], [_np(3, 4, 101.0), _np(7, 9, 201.0, False)])
    assert not state.in_sync and state.copying
    assert state.synced_primary == 4 and state.rpo_seconds(200.0) == 100.0


def test_pruned_primary_snapshot_falls_back_to_the_copy_time() -> None:
    state = sync_state([_p(9, 200.0)], [_np(3, 4, 150.0)])
    assert state.rpo_seconds(200.0) == 50.0


def test_nothing_copied_yet() -> None:
    state = sync_state([_p(4, 100.0)], [])
    assert state.synced_primary is None and state.rpo_seconds(1e9) is None and not state.in_sync
