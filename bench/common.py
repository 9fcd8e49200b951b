"""What the benchmarks share: a lab with two paired PVE sites, timing, guest creation."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tests.lab.ceph_lab import CephLab
from tests.lab.drsetup import DrLab, setup_dr
from tests.lab.pve_site import PveSite

T = TypeVar("T")
PY = sys.executable


Bench = DrLab


@contextmanager
def bench_sites() -> Iterator[DrLab]:
    """Give the paired two-site lab; takes it down afterwards only if it brought it up."""
    lab = CephLab()
    was_up = lab.is_up()
    lab.up()
    dr = None
    try:
        dr = setup_dr(lab)
        yield dr
    finally:
        if dr is not None:
            dr.stop()
        if not was_up:
            lab.down()


def timed(what: Callable[[], T]) -> tuple[T, float]:
    """Give the result of ``what()`` and the seconds it took."""
    start = time.perf_counter()
    result = what()
    return result, time.perf_counter() - start


def cli(site: PveSite, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``pve-mirror`` as its own process, as an admin would; raise if it fails."""
    return subprocess.run(
        [PY, "-m", "pve_mirror", "--root", str(site.root), *args],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip


def rbd_cli(site: PveSite, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one ``rbd`` process against ``site``'s cluster (the manual procedure)."""
    return subprocess.run(
        ["rbd", "-c", str(site.ceph.conf), *args],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip


def free_vmids(bench: Bench, count: int, start: int = 1000) -> list[int]:
    """Give ``count`` VMIDs from ``start`` on that no image of either site uses."""
    import rbd

    used: set[int] = set()
    for site in (bench.a, bench.b):
        with site.ceph.ioctx() as ioctx:
            for name in rbd.RBD().list(ioctx):
                parts = name.split("-")
                if len(parts) > 1 and parts[1].isdigit():
                    used.add(int(parts[1]))
    out: list[int] = []
    vmid = max([start - 1, *used]) + 1
    while len(out) < count:
        out.append(vmid)
        vmid += 1
    return out


def ratio_line(name: str, ours: float, theirs: float, goal: float) -> str:
    """Give one printed result line with the ratio and whether the goal was met."""
    ratio = theirs / ours if ours > 0 else float("inf")
    verdict = "meets" if ratio >= goal else "MISSES"
    return (
        f"{name}: pve-mirror {ours:.2f} s, manual {theirs:.2f} s, ratio {ratio:.1f}x "
        f"({verdict} the goal of {goal:g}x)"
    )
