"""What the benchmarks share: a lab with two paired PVE sites, timing, guest creation,
and the JSON line each run appends for docs/performance.md."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tests.lab.ceph_lab import CephLab
from tests.lab.drsetup import DrLab, setup_dr
from tests.lab.pve_site import RBD_STORAGE, PveSite

T = TypeVar("T")
PY = sys.executable
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results.jsonl"


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


def children_cpu() -> float:
    """Give the CPU seconds (user + system) of every waited-for child process so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cli(site: PveSite, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``pve-mirror`` as its own process, as an admin would; raise if it fails."""
    return subprocess.run(
        [PY, "-m", "pve_mirror", "--root", str(site.root), *args],
        capture_output=True, text=True, check=True, timeout=1800,
    )  # fmt: skip


def cli_timed(site: PveSite, *args: str) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """Run ``pve-mirror`` (see :func:`cli`); give the result, its wall and its CPU seconds."""
    cpu = children_cpu()
    done, seconds = timed(lambda: cli(site, *args))
    return done, seconds, children_cpu() - cpu


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


def create_guests(site: PveSite, vmids: list[int], disks: int, mib: int = 4) -> None:
    """Create VMs with ``disks`` RBD disks each, spread over the site's nodes."""
    for vmid in vmids:
        site.create_guest("qemu", vmid, [(RBD_STORAGE, mib)] * disks, node=site.spread_node(vmid))


def ratio_line(name: str, ours: float, theirs: float, goal: float) -> str:
    """Give one printed result line with the ratio and whether the goal was met."""
    ratio = theirs / ours if ours > 0 else float("inf")
    verdict = "meets" if ratio >= goal else "MISSES"
    return (
        f"{name}: pve-mirror {ours:.2f} s, manual {theirs:.2f} s, ratio {ratio:.1f}x "
        f"({verdict} the goal of {goal:g}x)"
    )


def case(
    items: int,
    ours: float,
    *,
    cpu: float | None = None,
    manual: float | None = None,
    goal: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Give one case of a result line: the times, the ratio (if there is a manual one)."""
    out: dict[str, Any] = {"items": items, "pve_mirror_s": round(ours, 3)}
    if cpu is not None:
        out["pve_mirror_cpu_s"] = round(cpu, 3)
    if manual is not None:
        out["manual_s"] = round(manual, 3)
        out["ratio"] = round(manual / ours, 2) if ours > 0 else None
    if goal is not None:
        out["goal"] = goal
    out.update(extra)
    return out


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """Give what the figures depend on: cores, load, Ceph release, kernel, Python."""
    from tests.lab.ceph_release import ceph_version

    return {
        "cores": os.cpu_count(),
        "load1_before": round(load_before[0], 2),
        "load1_after": round(os.getloadavg()[0], 2),
        "ceph": ceph_version(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "pve_mirror", "bench")
    return head + ("+dirty" if dirty else "")


def record(
    bench: str,
    args: dict[str, Any],
    cases: dict[str, dict[str, Any]],
    load_before: tuple[float, float, float],
    path: str | None,
) -> dict[str, Any]:
    """Append the run's JSON line to ``path`` (default bench/results.jsonl; ``-``: none)
    and give it."""
    line = {
        "bench": bench,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "args": args,
        "machine": machine(load_before),
        "cases": cases,
    }
    if path != "-":
        target = Path(path) if path else RESULTS
        with target.open("a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")
        print(f"result appended to {target}", flush=True)
    return line
