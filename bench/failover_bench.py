"""Speed of ``pve-mirror failover`` against the wiki procedure and the raw floor, on the lab.

    /usr/bin/python3 -m bench.failover_bench [--guests 20] [--disks 2] [--no-hook]

Prints times and ratios and appends one JSON line to bench/results.jsonl (``--json``
another file, ``-`` none); asserts nothing. Each variant moves its own G guests x D
disks (4 MiB images, replicated to site-b before the clock starts; the guests spread
over site-a's three nodes, and land on the node of the same rank at site-b), measured
from the command until every guest runs on site-b:

- pve-mirror: one ``pve-mirror failover vm ...`` process on site-b (``--force`` for
  the forced case, with site-a's Ceph and API down).
- wiki: what the Proxmox wiki leaves the admin to type. Planned: shut each guest down
  through the source's API (waiting for the task), then per image ``rbd mirror image
  demote`` on the source and ``rbd mirror image promote`` on the target (retried while
  the demotion has not arrived), copy each config, one API start per guest waiting for
  its task. Forced: per image ``rbd mirror image promote --force``, copy, start.
- floor: the same work with no checks and no journal, all at once: python3-rbd
  demotes/promotes from 16 threads on one connection, API stops and starts in parallel.

Every start and stop runs the guest's pve-mirror hookscript (a python3 process each);
in the forced case its peer check waits up to its peer timeout (3 s) for the dead site.
Every variant pays that; ``--no-hook`` creates the guests without it, which shows what
the procedures themselves cost.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import rbd

from bench.common import Bench, bench_sites, case, cli, free_vmids, rbd_cli, record
from tests.lab import rbdtools
from tests.lab.pve_site import RBD_STORAGE, PveSite

HOOKSCRIPT = "local:snippets/pve-mirror-hook"
IMAGE_MIB = 4
THREADS = 16
RETRY_S = 60.0
GOAL = 5.0


def images(vmids: Iterable[int], disks: int) -> list[str]:
    """Give the image names of the guests."""
    return [f"vm-{vmid}-disk-{d}" for vmid in vmids for d in range(disks)]


def parallel(function: Callable[[Any], object], items: Iterable[Any]) -> None:
    """Run ``function`` on every item from THREADS threads; re-raise the first failure."""
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(function, items))


def wait_task(api: Any, upid: str) -> None:
    """Poll a task (on the node its UPID names) until it stops; raise RuntimeError
    unless it ended OK."""
    node = upid.split(":")[1]
    deadline = time.monotonic() + 120
    while True:
        status = api.nodes(node).tasks(upid).status.get()
        if status["status"] == "stopped":
            if status.get("exitstatus") != "OK":
                raise RuntimeError(f"{upid}: {status.get('exitstatus')}")
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{upid} still running")
        time.sleep(0.05)


def guest_action(site: PveSite, action: str) -> Callable[[int], None]:
    """Give a function that runs ``status/<action>`` on a guest of ``site`` (on the node
    its config is on) and waits."""
    api = site.api()

    def run(vmid: int) -> None:
        node = site.guest_node("qemu", vmid)
        upid = getattr(api.nodes(node).qemu(vmid).status, action).post()
        wait_task(api, str(upid))

    return run


def copy_config(bench: Bench, vmid: int) -> None:
    """Put site-a's config of ``vmid`` on site-b's node of the same rank (what the admin
    does with scp)."""
    target = bench.b.guest_config_path("qemu", vmid, bench.b.spread_node(vmid))
    if not target.exists():
        source = bench.a.guest_config_path("qemu", vmid, bench.a.guest_node("qemu", vmid))
        shutil.copyfile(source, target)


def prepare(bench: Bench, count: int, disks: int, hook: bool) -> list[int]:
    """Create ``count`` guests on site-a, enable them and wait until site-b holds them."""
    vmids = free_vmids(bench, count)
    for vmid in vmids:
        bench.a.create_guest("qemu", vmid, [(RBD_STORAGE, IMAGE_MIB)] * disks,
                             hookscript=HOOKSCRIPT if hook else None,
                             node=bench.a.spread_node(vmid))  # fmt: skip
    for start in range(0, count, 50):
        cli(bench.a, "enable", "vm", *map(str, vmids[start : start + 50]), "--schedule", "5m")
    for image in images(vmids, disks):
        rbdtools.wait_replicated(bench.a.ceph, bench.b.ceph, image)
    return vmids


# --- the wiki procedure ----------------------------------------------------------------


def rbd_promote(site: PveSite, image: str, *, force: bool = False) -> None:
    """``rbd mirror image promote``, retried (bounded) while the peer is not demoted yet."""
    argv = ["mirror", "image", "promote", *(["--force"] if force else []), f"rbd/{image}"]
    deadline = time.monotonic() + RETRY_S
    while True:
        try:
            rbd_cli(site, *argv)
            return
        except subprocess.CalledProcessError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"promote {image}: {exc.stderr.strip()}") from exc
            time.sleep(0.2)


def wiki(bench: Bench, vmids: list[int], disks: int, *, forced: bool) -> None:
    """The manual procedure, one command after the other."""
    if not forced:
        shutdown = guest_action(bench.a, "shutdown")
        for vmid in vmids:
            shutdown(vmid)
    for image in images(vmids, disks):
        if not forced:
            rbd_cli(bench.a, "mirror", "image", "demote", f"rbd/{image}")
        rbd_promote(bench.b, image, force=forced)
    start = guest_action(bench.b, "start")
    for vmid in vmids:
        copy_config(bench, vmid)
        start(vmid)


# --- the floor -------------------------------------------------------------------------


def rbd_all(site: PveSite, names: list[str], what: Callable[[Any], None]) -> None:
    """Apply ``what`` to every image of ``names`` on ``site`` from THREADS threads."""
    with site.ceph.rados() as cluster:
        ioctx = cluster.open_ioctx(site.ceph.pool)
        try:

            def one(name: str) -> None:
                deadline = time.monotonic() + RETRY_S
                while True:
                    try:
                        with rbd.Image(ioctx, name) as image:
                            what(image)
                        return
                    except (rbd.ImageBusy, rbd.ReadOnlyImage):
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)

            parallel(one, names)
        finally:
            ioctx.close()


def floor(bench: Bench, vmids: list[int], disks: int, *, forced: bool) -> None:
    """The same work, all at once, no checks."""
    names = images(vmids, disks)
    if not forced:
        parallel(guest_action(bench.a, "shutdown"), vmids)
        rbd_all(bench.a, names, lambda image: image.mirror_image_demote())
    rbd_all(bench.b, names, lambda image: image.mirror_image_promote(forced))
    for vmid in vmids:
        copy_config(bench, vmid)
    parallel(guest_action(bench.b, "start"), vmids)


# --- the run ---------------------------------------------------------------------------


def report(name: str, ours: float, manual: float, bottom: float) -> str:
    """Give the result lines of one case."""
    ratio = manual / ours if ours > 0 else float("inf")
    verdict = "meets" if ratio >= GOAL else "MISSES"
    return (
        f"{name}: pve-mirror {ours:.2f} s, wiki {manual:.2f} s, floor {bottom:.2f} s; "
        f"wiki/pve-mirror {ratio:.1f}x ({verdict} the goal of {GOAL:g}x), "
        f"pve-mirror/floor {ours / bottom:.1f}x"
    )


def measure(bench: Bench, name: str, vmids: list[int], disks: int, *, forced: bool) -> float:
    """Move ``vmids`` to site-b the way ``name`` says; give the seconds it took."""
    started = time.perf_counter()
    if name.startswith("ours"):
        cli(bench.b, "failover", *(["--force"] if forced else []), "vm", *map(str, vmids))
    elif name.startswith("wiki"):
        wiki(bench, vmids, disks, forced=forced)
    else:
        floor(bench, vmids, disks, forced=forced)
    seconds = time.perf_counter() - started
    print(f"  {name}: {seconds:.2f} s", flush=True)
    return seconds


def run(
    bench: Bench, guests: int, disks: int, hook: bool = True
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Measure both cases; give the printed lines and the cases of the JSON line."""
    names = ("ours-p", "wiki-p", "floor-p", "ours-f", "wiki-f", "floor-f")
    sets = {name: prepare(bench, guests, disks, hook) for name in names}
    cli(bench.a, "sync")
    start_a = guest_action(bench.a, "start")
    times: dict[str, float] = {}
    for name in names[:3]:
        parallel(start_a, sets[name])  # running on site-a before the clock starts
        times[name] = measure(bench, name, sets[name], disks, forced=False)
    bench.lab.stop_site("site-a")
    try:
        for name in names[3:]:
            times[name] = measure(bench, name, sets[name], disks, forced=True)
    finally:
        bench.lab.start_site("site-a")
        bench.a.start()
    what = f"{guests} guests x {disks} disks" + ("" if hook else " (no hookscript)")
    lines = [
        report(f"planned failover of {what}", times["ours-p"], times["wiki-p"], times["floor-p"]),
        report(f"forced failover of {what}", times["ours-f"], times["wiki-f"], times["floor-f"]),
    ]
    cases = {
        kind: case(guests * disks, times[f"ours-{k}"], manual=times[f"wiki-{k}"], goal=GOAL,
                   floor_s=round(times[f"floor-{k}"], 3),
                   over_floor=round(times[f"ours-{k}"] / times[f"floor-{k}"], 2))
        for kind, k in (("planned", "p"), ("forced", "f"))
    }  # fmt: skip
    return lines, cases


def main() -> None:
    """Run the measurement and print one line per case."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--guests", type=int, default=20)
    parser.add_argument("--disks", type=int, default=2)
    parser.add_argument("--no-hook", action="store_true", help="guests without the hookscript")
    parser.add_argument("--json", metavar="FILE", help="where the JSON line goes ('-': none)")
    args = parser.parse_args()
    load = os.getloadavg()
    with bench_sites() as bench:
        lines, cases = run(bench, args.guests, args.disks, not args.no_hook)
        for line in lines:
            print(line, flush=True)
        record("failover_bench", vars(args), cases, load, args.json)


if __name__ == "__main__":
    main()
