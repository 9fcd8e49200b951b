"""Two PVE sites on the Ceph lab, paired with ``pve-mirror site init``, for the
mirroring and failover tests; and a way to run the CLI in-process.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest
import rbd

from tests.lab.ceph_lab import CephLab
from tests.lab.drsetup import DrLab, setup_dr

# Each test takes fresh VMIDs so that tests sharing a lab (kept between runs) never
# collide; the count starts above every VMID whose images exist on either site.
_vmids = [itertools.count(300)]


def next_vmid() -> int:
    """Give a VMID that no image on the lab and no other test of this session uses."""
    return next(_vmids[0])


def _restart_vmids(lab: CephLab) -> None:
    highest = 299
    for site in lab.sites.values():
        with site.ioctx() as ioctx:
            for name in rbd.RBD().list(ioctx):
                match = re.match(r"(?:vm|base)-(\d+)-", name)
                if match:
                    highest = max(highest, int(match.group(1)))
    _vmids[0] = itertools.count(highest + 1)


Sites = DrLab


@pytest.fixture(scope="session")
def dr_lab(ceph_lab: CephLab) -> Iterator[DrLab]:
    """Give both PVE sites running on the lab, paired by ``site init``, hooks installed."""
    _restart_vmids(ceph_lab)
    try:
        dr = setup_dr(ceph_lab)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield dr
    dr.stop()


@pytest.fixture
def sites(dr_lab: DrLab) -> DrLab:
    """Give the paired sites with both simulators running: a test that took a site down
    (``CephLab.stop_site`` stops its simulator too) leaves it to the next one to start."""
    for site in (dr_lab.a, dr_lab.b):
        if not site.running():
            site.start()
    return dr_lab
