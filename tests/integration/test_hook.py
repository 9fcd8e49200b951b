"""The installed hookscript on the real two-site lab.

A VM with two mirrored RBD disks lives on site-a (primary); site-b has the same
config on the replicated (non-primary) images. The hook, installed with
``pve-mirror hook install`` and run as PVE runs it (``<snippet> <vmid> <phase>``),
must let the start through on site-a, refuse it on site-b naming the disks, refuse it
on site-a once a disk is demoted, and take a mirror snapshot at post-stop.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import rbd

from pve_mirror.ceph.access import ClusterAccess
from pve_mirror.ceph.cluster import connected
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.ceph.mirror import enable
from pve_mirror.cli.main import main
from pve_mirror.pve.siteconfig import GuestEntry, load_site_config
from tests.lab import rbdtools
from tests.lab.ceph_lab import CephLab, CephSite
from tests.lab.drsetup import pvesh_of
from tests.lab.pve_site import RBD_STORAGE, PveSite


def access(site: CephSite) -> ClusterAccess:
    return ClusterAccess(site.name, "admin", str(site.conf), tuple(site.rados_conf().items()))


@dataclass
class Sites:
    a: PveSite
    b: PveSite
    vmid: int

    def images(self) -> list[str]:
        return [f"vm-{self.vmid}-disk-{i}" for i in range(2)]


def configure(site: PveSite, peer: str, vmid: int) -> None:
    cfg = load_site_config(site.root, required=False)
    cfg.set_section("site", site.name, {"peer": peer})
    cfg.set_section("peer", peer, {"ssh": "root@127.0.0.1"})
    cfg.set_guest(GuestEntry("qemu", vmid))
    cfg.save()
    with pvesh_of(site):  # hook install sets the hookscript as root@pam, through pvesh
        assert main(["--root", str(site.root), "hook", "install", "--output-format", "json"]) == 0


def run_hook(site: PveSite, vmid: int, phase: str) -> subprocess.CompletedProcess[str]:
    """Run the installed snippet exactly as PVE does, with a clean environment."""
    script = site.local_path / "snippets" / "pve-mirror-hook"
    return subprocess.run(
        [str(script), str(vmid), phase],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
        check=False,
    )


@pytest.fixture(scope="module")
def sites(ceph_lab: CephLab) -> Iterator[Sites]:
    site_a, site_b = ceph_lab.sites["site-a"], ceph_lab.sites["site-b"]
    a, b = PveSite(site_a), PveSite(site_b)
    # hook install sets the hookscript through pvesh, which needs the site's simulator
    started = [s for s in (a, b) if not s.running()]
    for s in (a, b):
        s.start()
    vmid = random.randint(10_000, 99_999)
    a.create_guest("qemu", vmid, [(RBD_STORAGE, 16), (RBD_STORAGE, 16)])
    with connected(access(site_a)) as cluster:
        for image in (f"vm-{vmid}-disk-0", f"vm-{vmid}-disk-1"):
            enable(cluster, ImageSpec("rbd", "", image), "snapshot")
    for image in (f"vm-{vmid}-disk-0", f"vm-{vmid}-disk-1"):
        rbdtools.wait_replicated(site_a, site_b, image)
    b.create_guest(
        "qemu",
        vmid,
        [(RBD_STORAGE, 16, f"vm-{vmid}-disk-0"), (RBD_STORAGE, 16, f"vm-{vmid}-disk-1")],
    )
    configure(a, "site-b", vmid)
    configure(b, "site-a", vmid)
    yield Sites(a, b, vmid)
    for s in started:
        s.stop()
    # Best effort (one image ends demoted on both sides): drop mirroring, then the images.
    for site in (site_a, site_b):
        for image in (f"vm-{vmid}-disk-0", f"vm-{vmid}-disk-1"):
            with contextlib.suppress(rbd.Error):
                with rbdtools.open_image(site, image) as handle:
                    handle.mirror_image_disable(True)
                with site.ioctx() as ioctx:
                    rbd.RBD().remove(ioctx, image)


def test_pre_start_allows_the_primary_site(sites: Sites) -> None:
    done = run_hook(sites.a, sites.vmid, "pre-start")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_pre_start_refuses_the_non_primary_copy(sites: Sites) -> None:
    done = run_hook(sites.b, sites.vmid, "pre-start")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"pve-mirror hook: VM {sites.vmid}: refusing to start")
    for image in sites.images():
        assert f"rbd/{image}" in lines[0]
    assert "scsi0" in lines[0] and "scsi1" in lines[0]


def test_other_phases_pass_on_the_non_primary_site(sites: Sites) -> None:
    for phase in ("post-start", "pre-stop"):
        assert run_hook(sites.b, sites.vmid, phase).returncode == 0
    # post-stop on the non-primary copy: nothing to snapshot, no error
    done = run_hook(sites.b, sites.vmid, "post-stop")
    assert done.returncode == 0 and done.stderr == ""


def test_post_stop_takes_a_mirror_snapshot_that_replicates(sites: Sites) -> None:
    site_a, site_b = sites.a.ceph, sites.b.ceph
    before = {i: rbdtools.newest_primary_snap(site_a, i) for i in sites.images()}
    done = run_hook(sites.a, sites.vmid, "post-stop")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("mirror snapshot") == 2
    for image in sites.images():
        after = rbdtools.newest_primary_snap(site_a, image)
        old = before[image]
        assert after is not None and old is not None and after.id > old.id
        assert rbdtools.wait_replicated(site_a, site_b, image)[0] == after.id


def test_pre_start_refuses_after_a_demotion(sites: Sites) -> None:
    site_a = sites.a.ceph
    image = sites.images()[1]
    rbdtools.demote(site_a, image)
    done = run_hook(sites.a, sites.vmid, "pre-start")
    assert done.returncode == 1
    assert f"scsi1 (rbd/{image})" in done.stderr
    assert "scsi0" not in done.stderr


def test_unmirrored_disk_is_fine(sites: Sites, ceph_lab: CephLab) -> None:
    vmid = sites.vmid + 1
    sites.a.create_guest("qemu", vmid, [(RBD_STORAGE, 8)])
    try:
        assert main(["--root", str(sites.a.root), "hook", "run", str(vmid), "pre-start"]) == 0
    finally:
        with sites.a.ceph.ioctx() as ioctx:
            rbd.RBD().remove(ioctx, f"vm-{vmid}-disk-0")
        Path(sites.a.guest_config_path("qemu", vmid)).unlink()
