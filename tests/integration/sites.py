"""Two PVE sites on the Ceph lab, paired with ``pve-mirror site init``, for the
mirroring and failover tests; and a way to run the CLI in-process.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rbd

from pve_mirror.cli.main import main
from tests.lab.ceph_lab import CephLab
from tests.lab.pve_site import PveSite, pve_sites_for

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


@dataclass
class CliResult:
    """What one in-process run of ``pve-mirror`` gave."""

    rc: int
    out: str
    err: str

    def json(self) -> Any:
        """Give stdout parsed as JSON."""
        return json.loads(self.out)


def run_cli(root: Path, *args: str) -> CliResult:
    """Run ``pve-mirror --root ROOT ARGS...`` in this process; never raises SystemExit."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(["--root", str(root), *args])
        except SystemExit as exc:
            rc = int(exc.code or 0)
    return CliResult(rc, out.getvalue(), err.getvalue())


@dataclass
class Sites:
    """Both lab sites as PVE sites, each paired with the other."""

    lab: CephLab
    a: PveSite
    b: PveSite

    def cli(self, site: PveSite, *args: str) -> CliResult:
        """Run the CLI against ``site``'s config root."""
        return run_cli(site.root, *args)


def init_args(site: PveSite, peer: PveSite) -> list[str]:
    """Give the ``site init`` arguments that pair ``site`` with ``peer`` in the lab."""
    args = [
        "site", "init", "--name", site.name, "--peer", peer.name,
        "--peer-ceph-conf", str(peer.ceph.conf),
        "--peer-keyring", str(peer.ceph.admin_keyring),
        "--peer-api-url", peer.api_url.removesuffix("/api2/json"),
        "--peer-api-token", peer.token,
        "--peer-api-secret-file", str(peer.token_file),
        "--peer-node", peer.node,
        "--peer-root", str(peer.root),
    ]  # fmt: skip
    # The simulator writes its certificate when it starts; init again after that.
    if peer.ca_cert.is_file() and peer.ca_cert.stat().st_size:
        args += ["--peer-api-ca", str(peer.ca_cert)]
    return args


@pytest.fixture(scope="session")
def sites(ceph_lab: CephLab) -> Iterator[Sites]:
    """Give both PVE sites, built on the lab and paired by ``pve-mirror site init``."""
    _restart_vmids(ceph_lab)
    pve = pve_sites_for(ceph_lab.sites)
    a, b = pve["site-a"], pve["site-b"]
    for site in (a, b):
        site.build()
    for site, peer in ((a, b), (b, a)):
        result = run_cli(site.root, *init_args(site, peer))
        assert result.rc == 0, result.err
    yield Sites(ceph_lab, a, b)
