"""Shared pytest fixtures: the two-site Ceph lab (session-scoped)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.lab.ceph_lab import CephLab, LabError


@pytest.fixture(scope="session")
def ceph_lab() -> Iterator[CephLab]:
    """Give the two-site lab, brought up if it is not up, for the whole session.

    It is taken down at session end only if this session brought it up, and not at
    all with PVE_MIRROR_LAB_KEEP=1. A lab that cannot come up fails the tests that
    use it with the reason (it never skips: CI installs everything).
    """
    lab = CephLab()
    was_up = lab.is_up()
    try:
        lab.up()
    except LabError as exc:
        pytest.fail(f"the two-site Ceph lab cannot come up: {exc}", pytrace=False)
    yield lab
    if not was_up and os.environ.get("PVE_MIRROR_LAB_KEEP") != "1":
        lab.down()
