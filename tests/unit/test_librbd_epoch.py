"""Snapshot times from python3-rbd: naive UTC up to 18.2, aware UTC from 20.2."""

import datetime as dt

import pytest

from pve_mirror.ceph.mirror import librbd_epoch

EPOCH = 1_796_142_205.0  # 2026-12-01 16:23:25 UTC


@pytest.mark.parametrize(
    "stamp",
    [
        dt.datetime(2026, 12, 1, 16, 23, 25),  # 16.2, 18.2: naive, in UTC
        dt.datetime(2026, 12, 1, 16, 23, 25, tzinfo=dt.UTC),  # 20.2: aware, UTC
        dt.datetime(2026, 12, 1, 17, 23, 25, tzinfo=dt.timezone(dt.timedelta(hours=1))),
    ],
)
def test_every_form_gives_the_same_instant(stamp: dt.datetime) -> None:
    assert librbd_epoch(stamp) == EPOCH
