"""The authority rules of failback and resync (pve_mirror.actions.authority) on mirror
snapshot chains built from the project's own types: who holds the newest data."""

from __future__ import annotations

import pytest

from pve_mirror.actions import authority
from pve_mirror.actions.authority import Side, decide, last_takeover
from pve_mirror.actions.failback import FailbackOptions
from pve_mirror.ceph.mirror import MirrorInfo, MirrorSnapshot

T0 = 1_800_000_000.0
IMAGE = "rbd/vm-300-disk-0"


def info(primary: bool) -> MirrorInfo:
    return MirrorInfo("enabled", "snapshot", primary, "gid")


def prim(snap_id: int, at: float, state: str = "primary") -> MirrorSnapshot:
    return MirrorSnapshot(snap_id, state, True, None, T0 + at)


def copy(snap_id: int, of: int, at: float, complete: bool = True) -> MirrorSnapshot:
    return MirrorSnapshot(snap_id, "non-primary", complete, of, T0 + at)


# site-a wrote snapshots 10, 11, 12 (t=0, 60, 120); site-b copied 10 and 11 as 20, 21.
A_BEFORE = [prim(10, 0), prim(11, 60), prim(12, 120)]
B_COPIES = [copy(20, 10, 1), copy(21, 11, 61)]
# forced failover at t=150: site-b promoted (30) and writes on (31 at t=400)
B_AFTER_FORCE = [*B_COPIES, prim(30, 150), prim(31, 400)]


def test_peer_primary_and_a_copy_here_is_normal() -> None:
    here = Side("site-a", info(False), [prim(12, 120, "primary-demoted"), copy(40, 31, 401)])
    verdict = decide(IMAGE, here, Side("site-b", info(True), B_AFTER_FORCE))
    assert verdict.kind == authority.NORMAL
    assert not verdict.refused and not verdict.discards


def test_forced_failover_run_on_the_site_that_took_over_is_the_wrong_site() -> None:
    # failback run on site-b: here=site-b (took over), peer=site-a (never did)
    here = Side("site-b", info(True), B_AFTER_FORCE)
    peer = Side("site-a", info(True), A_BEFORE)
    verdict = decide(IMAGE, here, peer)
    assert verdict.kind == authority.WRONG_SITE
    assert verdict.refused and verdict.discards
    line = authority.refusal([verdict], "failback", "--discard-newer-here")
    assert IMAGE in line and "nothing changed" in line and "--discard-newer-here" in line
    # both data ages: site-b's newest primary snapshot (t=400) and site-a's (t=120)
    assert "site-b: data of 2027-01-15 08:06:40 UTC" in line
    assert "site-a: data of 2027-01-15 08:02:00 UTC" in line


def test_forced_failover_run_on_the_returning_site_is_allowed() -> None:
    # failback run on site-a: here=site-a wrote 12 after site-b's copy of 11: split-brain
    here = Side("site-a", info(True), A_BEFORE)
    verdict = decide(IMAGE, here, Side("site-b", info(True), B_AFTER_FORCE))
    assert verdict.kind == authority.SPLIT
    assert not verdict.refused and verdict.discards
    assert verdict.newer_here == (12,)
    assert "discards what site-a wrote" in verdict.explain()


def test_returning_site_that_wrote_nothing_since_the_takeover() -> None:
    here = Side("site-a", info(True), A_BEFORE[:2])
    verdict = decide(IMAGE, here, Side("site-b", info(True), B_AFTER_FORCE))
    assert verdict.kind == authority.TAKEN_OVER
    assert not verdict.refused and not verdict.discards


def test_takeover_during_a_copy_counts_from_the_last_complete_copy() -> None:
    # site-b was copying 12 (incomplete) when forced: it holds 11's data, so 12 is newer
    peer = Side("site-b", info(True), [*B_COPIES, copy(22, 12, 121, False), prim(30, 150)])
    assert last_takeover(peer.snaps) == authority.Takeover(11, T0 + 150)
    verdict = decide(IMAGE, Side("site-a", info(True), A_BEFORE), peer)
    assert verdict.newer_here == (12,)


def test_a_later_takeover_here_makes_here_the_authority() -> None:
    # site-a took over at t=500 (after site-b's takeover at t=150): site-a is newer
    here = Side("site-a", info(True), [copy(40, 31, 401), prim(41, 500)])
    verdict = decide(IMAGE, here, Side("site-b", info(True), B_AFTER_FORCE))
    assert verdict.kind == authority.WRONG_SITE


def test_peer_not_primary_refuses_and_says_where_the_data_is() -> None:
    here = Side("site-a", info(True), A_BEFORE)
    verdict = decide(IMAGE, here, Side("site-b", info(False), B_COPIES))
    assert verdict.kind == authority.PEER_NOT_PRIMARY and verdict.refused
    assert "the data is here" in verdict.explain()
    assert "'pve-mirror failover' on site-b" in verdict.explain()


def test_neither_primary_points_at_the_unfinished_failover() -> None:
    here = Side("site-a", info(False), [prim(12, 120, "primary-demoted")])
    verdict = decide(IMAGE, here, Side("site-b", info(False), B_COPIES))
    assert verdict.kind == authority.NEITHER_PRIMARY and verdict.refused
    assert "failover stopped between demote and promote" in verdict.explain()


def test_missing_peer_image_is_refused() -> None:
    verdict = decide(IMAGE, Side("site-a", info(True), A_BEFORE), Side("site-b", None))
    assert verdict.kind == authority.PEER_MISSING and verdict.refused


def test_no_image_here_is_normal() -> None:
    verdict = decide(IMAGE, Side("site-a", None), Side("site-b", info(True), B_AFTER_FORCE))
    assert verdict.kind == authority.NORMAL


@pytest.mark.parametrize(
    ("snaps", "data_time"),
    [
        ([], None),
        (B_COPIES, None),
        (B_AFTER_FORCE, T0 + 400),
        ([prim(12, 120, "primary-demoted"), copy(40, 31, 401)], T0 + 120),
    ],
)
def test_data_age_is_the_newest_primary_snapshot(
    snaps: list[MirrorSnapshot], data_time: float | None
) -> None:
    assert Side("x", info(True), snaps).data_time == data_time


def test_planned_round_trip_chain_shows_the_latest_takeover() -> None:
    # a -> b planned (b: copies, non-primary-demoted, then primary), later b -> a
    chain = [
        copy(20, 10, 1),
        MirrorSnapshot(21, "non-primary-demoted", True, 11, T0 + 61),
        prim(22, 70),
        prim(23, 200, "primary-demoted"),
        copy(24, 50, 300),
        prim(25, 400),
    ]
    assert last_takeover(chain) == authority.Takeover(50, T0 + 400)


# Measured on Ceph 16.2: after a forced promotion the promoted chain holds primary
# snapshots only (the first one removes the copies), so the takeover pair is gone.
B_FORCED_16 = [prim(30, 150), prim(31, 400)]
A_RETURNED = [prim(11, 60), prim(12, 120)]


def test_without_the_pair_this_sites_fence_note_marks_the_wrong_site() -> None:
    here = Side("site-b", info(True), B_FORCED_16, fenced_other_at=T0 + 150)
    verdict = decide(IMAGE, here, Side("site-a", info(True), A_RETURNED))
    assert verdict.kind == authority.WRONG_SITE
    assert "site-b forced a failover from site-a" in verdict.explain()


def test_without_the_pair_a_guest_running_here_marks_the_wrong_site() -> None:
    here = Side("site-b", info(True), B_FORCED_16, running=True)
    verdict = decide(IMAGE, here, Side("site-a", info(True), A_RETURNED))
    assert verdict.kind == authority.WRONG_SITE
    assert "the guest runs at site-b" in verdict.explain()


def test_without_the_pair_or_a_note_the_returning_site_yields() -> None:
    # site-a came back (no note of its own, guest stopped by the hook): site-b took over;
    # site-a's snapshot 13 (t=450) was taken after site-b's promotion: split-brain
    here = Side("site-a", info(True), [*A_RETURNED, prim(13, 450)])
    verdict = decide(IMAGE, here, Side("site-b", info(True), B_FORCED_16))
    assert verdict.kind == authority.SPLIT and verdict.newer_here == (13,)
    quiet = decide(
        IMAGE, Side("site-a", info(True), A_RETURNED), Side("site-b", info(True), B_FORCED_16)
    )
    assert quiet.kind == authority.TAKEN_OVER


def test_a_takeover_by_the_peer_after_this_sites_note_wins() -> None:
    # site-b forced at t=150 (its note), later site-a took over again at t=900
    peer = Side("site-a", info(True), [copy(50, 31, 800), prim(51, 900)])
    here = Side("site-b", info(True), B_FORCED_16, fenced_other_at=T0 + 150)
    assert decide(IMAGE, here, peer).kind == authority.TAKEN_OVER


@pytest.mark.parametrize(
    ("guests", "yes", "override", "allowed"),
    [
        (None, True, False, False),  # --all --yes: split images are left alone
        ([("qemu", 100)], True, False, True),
        ([("qemu", 100)], False, False, False),
        ([("qemu", 100)], False, True, True),
    ],
)
def test_one_yes_never_covers_all(
    guests: list[tuple[str, int]] | None, yes: bool, override: bool, allowed: bool
) -> None:
    options = FailbackOptions(guests=guests, yes=yes, discard_newer_here=override)  # type: ignore[arg-type]
    assert options.may_resync_split is allowed
