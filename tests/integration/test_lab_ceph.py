"""The two-site lab itself, driven by hand with python3-rbd (no pve_mirror code)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.lab import rbdtools as rt
from tests.lab.ceph_lab import CephLab, CephSite
from tests.lab.wait import wait_until


@pytest.fixture
def image_name(ceph_lab: CephLab) -> Iterator[str]:
    """Give a fresh image name; removes the image from both sites afterwards."""
    name = f"lab-test-{uuid.uuid4().hex[:8]}"
    yield name
    a, b = ceph_lab.sites["site-a"], ceph_lab.sites["site-b"]
    primary, secondary = (a, b) if rt.image_exists(a, name) and rt.is_primary(a, name) else (b, a)
    rt.remove_image(primary, secondary, name)


def write_and_snapshot(site: CephSite, name: str, offset: int, size: int) -> None:
    rt.write(site, name, offset, os.urandom(size))
    rt.create_mirror_snapshot(site, name)


def test_lab_is_up_healthy_and_up_is_idempotent(ceph_lab: CephLab) -> None:
    status = ceph_lab.status()
    assert status["healthy"], status
    for name, site in status["sites"].items():
        other = "site-b" if name == "site-a" else "site-a"
        assert site["mirror_mode"] == "image"
        assert site["site_name"] == name
        assert [(p["site_name"], p["direction"]) for p in site["peers"]] == [(other, "rx-tx")]
        assert site["daemon_health"] == "OK"
        assert all(site["processes"].values()), site["processes"]
    pids = ceph_lab.processes()
    assert "already up" in ceph_lab.up()
    assert ceph_lab.processes() == pids


def test_snapshot_mirroring_both_ways(ceph_lab: CephLab, image_name: str) -> None:
    a, b = ceph_lab.sites["site-a"], ceph_lab.sites["site-b"]
    rt.create_image(a, image_name, 64 * rt.MiB)
    rt.enable_snapshot_mirroring(a, image_name)
    write_and_snapshot(a, image_name, 0, 16 * rt.MiB)
    first = rt.wait_byte_identical(a, b, image_name)
    assert rt.is_primary(a, image_name)
    assert not rt.is_primary(b, image_name)

    # Planned failover a -> b: demote, wait for the demotion to be copied, promote
    # (bounded retry on EROFS/EBUSY, gotcha 13), wait for b's promote snapshot on a
    # (gotcha 14), then write on b and replicate back.
    rt.failover(a, b, image_name)
    assert rt.is_primary(b, image_name)
    assert not rt.is_primary(a, image_name)
    write_and_snapshot(b, image_name, 8 * rt.MiB, 8 * rt.MiB)
    second = rt.wait_byte_identical(b, a, image_name)
    assert second != first

    # And back b -> a.
    rt.failover(b, a, image_name)
    assert rt.is_primary(a, image_name)
    assert not rt.is_primary(b, image_name)
    write_and_snapshot(a, image_name, 60 * rt.MiB, 4 * rt.MiB)
    third = rt.wait_byte_identical(a, b, image_name)
    assert third not in (first, second)


def test_stopped_mirror_daemon_is_visible(ceph_lab: CephLab) -> None:
    ceph_lab.stop_mirror_daemon("site-b")
    try:
        assert ceph_lab.processes()["site-b"]["rbd-mirror"] is None
        health = wait_until(
            lambda: (h := ceph_lab.daemon_health("site-b")) != "OK" and h,
            timeout=60,
            what="site-b daemon health to leave OK",
        )
        assert health in ("UNKNOWN", "WARNING", "ERROR")
        assert ceph_lab.daemon_health("site-a") == "OK"
    finally:
        ceph_lab.start_mirror_daemon("site-b")
    assert ceph_lab.daemon_health("site-b") == "OK"
    assert ceph_lab.status()["healthy"]


def test_stopped_site_keeps_its_data(ceph_lab: CephLab, image_name: str) -> None:
    a, b = ceph_lab.sites["site-a"], ceph_lab.sites["site-b"]
    rt.create_image(a, image_name, 16 * rt.MiB)
    rt.enable_snapshot_mirroring(a, image_name)
    write_and_snapshot(a, image_name, 0, 4 * rt.MiB)
    want = rt.wait_byte_identical(a, b, image_name)
    ceph_lab.stop_site("site-a")
    try:
        assert not any(ceph_lab.processes()["site-a"].values())
        assert ceph_lab.status()["sites"]["site-a"]["error"] == "mon not running"
        assert rt.checksum(b, image_name) == want  # the surviving site still reads
    finally:
        ceph_lab.start_site("site-a")
    assert rt.checksum(a, image_name) == want
    assert rt.is_primary(a, image_name)
