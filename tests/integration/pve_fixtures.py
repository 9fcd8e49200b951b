"""Fixtures for the simulated PVE nodes of the two-site lab.

Import them into a test module (or a conftest) with
``from tests.integration.pve_fixtures import new_vmid, pve_sites``
(or assign them to module names, as tests/integration/test_pvesim.py does).
They build on the session-scoped ``ceph_lab`` fixture of tests/conftest.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

from tests.lab import rbdtools as rt
from tests.lab.ceph_lab import CephLab
from tests.lab.pve_site import PveSite, pve_sites_for


@pytest.fixture(scope="session")
def pve_sites(ceph_lab: CephLab) -> Iterator[dict[str, PveSite]]:
    """Give a running PveSite per lab site ("site-a": node pve-a1, "site-b": pve-b1).

    The simulators run for the whole session and are stopped at its end (their
    guests with them).
    """
    sites = pve_sites_for(ceph_lab.sites)
    try:
        for site in sites.values():
            site.start()
        yield sites
    finally:
        for site in sites.values():
            site.stop()


@pytest.fixture
def new_vmid(ceph_lab: CephLab) -> Callable[[], int]:
    """Give a function that hands out VMIDs with no image ``vm-<vmid>-disk-0`` on any site."""
    used: set[int] = set()

    def pick() -> int:
        while True:
            vmid = random.randint(1000, 999999)
            if vmid in used:
                continue
            if not any(rt.image_exists(s, f"vm-{vmid}-disk-0") for s in ceph_lab.sites.values()):
                used.add(vmid)
                return vmid

    return pick
