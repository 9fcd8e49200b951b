"""Speed of pve-mirror at the scale of a site, against the manual procedure, on the lab.

    python -m bench.mirror_bench [--images 1000] [--guests 20] [--json FILE]

Prints one line per case and appends one JSON line to bench/results.jsonl (``--json``
another file, ``-`` none), which docs/performance.md tabulates. Asserts nothing.
Guests are spread over the site's three nodes; every pve-mirror command is its own
process, as an admin runs it; "CPU" is that process's user + system time.

- enable at scale: ``pve-mirror enable`` of N/2 guests x 2 disks, in one command.
- status: ``pve-mirror status`` of those N disks once site-b holds a copy of each
  (the steady state), against one ``rbd mirror image status`` process per image.
- status --prometheus: the same, writing the node-exporter textfile.
- reconcile: ``pve-mirror reconcile`` of the N/2 guests (nothing to change).
- sync: ``pve-mirror sync`` of the N/2 guests' configs, against one ``scp`` per config
  into site-b's /etc/pve (the wiki's way).
- enable: ``pve-mirror enable`` of G guests x 2 disks against the wiki's loop of
  ``rbd mirror image enable`` plus ``rbd mirror snapshot schedule add`` per image, on
  G other guests x 2 disks.

Bring the lab up on its own for this (``python -m tests.lab up``, or let the bench do
it): it leaves N + 4G mirrored images behind when the lab was already up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from typing import Any

import rbd

from bench.common import (
    Bench,
    bench_sites,
    case,
    cli_timed,
    create_guests,
    free_vmids,
    ratio_line,
    rbd_cli,
    record,
    timed,
)

REPLICATION_TIMEOUT = 1800.0


def images_of(vmids: list[int], disks: int) -> list[str]:
    """Give the image names of the guests' disks."""
    return [f"vm-{vmid}-disk-{d}" for vmid in vmids for d in range(disks)]


def wait_copied(bench: Bench, names: list[str]) -> float:
    """Wait until rbd-mirror at site-b reports a complete copy of every image; give
    the seconds waited. Raises RuntimeError after REPLICATION_TIMEOUT."""
    wanted = set(names)
    started = time.monotonic()
    last = -1
    while True:
        with bench.b.ceph.ioctx() as ioctx:
            statuses = list(rbd.RBD().mirror_image_status_list(ioctx))
        copied = {
            str(s["name"])
            for s in statuses
            if s["name"] in wanted and "local_snapshot_timestamp" in str(s.get("description"))
        }
        if len(copied) == len(wanted):
            return time.monotonic() - started
        if len(copied) != last:
            print(f"  waiting for site-b to copy: {len(copied)}/{len(wanted)}", flush=True)
            last = len(copied)
        if time.monotonic() - started > REPLICATION_TIMEOUT:
            raise RuntimeError(f"site-b copied {len(copied)} of {len(wanted)} images in time")
        time.sleep(5)


def bench_scale_enable(bench: Bench, vmids: list[int]) -> dict[str, Any]:
    """Enable N/2 guests x 2 disks in one command."""
    _, seconds, cpu = cli_timed(bench.a, "enable", "vm", *map(str, vmids), "--schedule", "5m")
    print(f"enable of {len(vmids)} guests x 2 disks: pve-mirror {seconds:.2f} s (CPU {cpu:.2f} s)")
    return case(len(vmids), seconds, cpu=cpu)


def bench_status(bench: Bench, vmids: list[int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Status of the guests' disks by pve-mirror, and image by image with ``rbd``."""
    names = images_of(vmids, 2)
    cli_timed(bench.a, "status", "--output-format", "json")  # warm page cache and mgr
    done, ours, cpu = cli_timed(bench.a, "status", "--output-format", "json")
    disks = sum(len(g["disks"]) for g in json.loads(done.stdout))
    health = sorted({d["health"] for g in json.loads(done.stdout) for d in g["disks"]})

    def manual() -> None:
        for name in names:
            rbd_cli(bench.a, "mirror", "image", "status", f"rbd/{name}", "--format", "json")

    _, theirs = timed(manual)
    print(ratio_line(f"status of {disks} disks (CPU {cpu:.2f} s)", ours, theirs, 20), flush=True)
    textfile = bench.lab.root / "bench-status.prom"
    _, prom, prom_cpu = cli_timed(bench.a, "status", "--prometheus", str(textfile))
    print(f"status --prometheus of {disks} disks: pve-mirror {prom:.2f} s (CPU {prom_cpu:.2f} s)")
    return (
        case(disks, ours, cpu=cpu, manual=theirs, goal=20, health=health),
        case(disks, prom, cpu=prom_cpu),
    )


def bench_reconcile(bench: Bench, guests: int) -> dict[str, Any]:
    """Reconcile of every enabled guest when nothing has to change."""
    _, seconds, cpu = cli_timed(bench.a, "reconcile", "--output-format", "json")
    print(f"reconcile of {guests} guests (nothing to do): pve-mirror {seconds:.2f} s "
          f"(CPU {cpu:.2f} s)")  # fmt: skip
    return case(guests, seconds, cpu=cpu)


def bench_sync(bench: Bench, vmids: list[int]) -> dict[str, Any]:
    """Sync of the guests' configs, against one scp per config into site-b's /etc/pve."""
    _, ours, cpu = cli_timed(bench.a, "sync", "--output-format", "json")
    target = bench.b.root / "pve-mirror" / "bench-scp"
    target.mkdir(parents=True, exist_ok=True)
    ssh = bench.ssh
    # -O: the lab's sshd has no sftp subsystem; scp's own protocol needs none.
    options = ["-O", "-q", "-P", str(ssh.port), "-i", str(ssh.key_path),
               "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={ssh.known_hosts}",
               "-o", "StrictHostKeyChecking=yes"]  # fmt: skip

    def manual() -> None:
        for vmid in vmids:
            source = bench.a.guest_config_path("qemu", vmid, bench.a.guest_node("qemu", vmid))
            subprocess.run(
                ["scp", *options, str(source), f"{ssh.target}:{target}/{vmid}.conf"],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip

    try:
        _, theirs = timed(manual)
    finally:
        for path in target.iterdir():
            path.unlink()
        target.rmdir()
    print(ratio_line(f"sync of {len(vmids)} guest configs (CPU {cpu:.2f} s)", ours, theirs, 3))
    return case(len(vmids), ours, cpu=cpu, manual=theirs, goal=3)


def bench_enable(bench: Bench, guests: int) -> dict[str, Any]:
    """Enable of G guests x 2 disks, against the wiki's loop on G other guests."""
    vmids = free_vmids(bench, 2 * guests)
    ours, wiki = vmids[:guests], vmids[guests:]
    create_guests(bench.a, vmids, 2)
    _, seconds, cpu = cli_timed(bench.a, "enable", "vm", *map(str, ours), "--schedule", "5m")

    def manual() -> None:
        for name in images_of(wiki, 2):
            rbd_cli(bench.a, "mirror", "image", "enable", f"rbd/{name}", "snapshot")
            rbd_cli(bench.a, "mirror", "snapshot", "schedule", "add", "--pool", "rbd",
                    "--image", name, "5m")  # fmt: skip

    _, theirs = timed(manual)
    print(ratio_line(f"enable {guests} guests x 2 disks (CPU {cpu:.2f} s)", seconds, theirs, 3))
    return case(guests, seconds, cpu=cpu, manual=theirs, goal=3)


def main() -> None:
    """Run every case; print one line each and append the run's JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="disks for status (N)")
    parser.add_argument("--guests", type=int, default=20, help="guests for enable (G)")
    parser.add_argument("--json", metavar="FILE", help="where the JSON line goes ('-': none)")
    args = parser.parse_args()
    load = os.getloadavg()
    with bench_sites() as bench:
        print(f"lab {bench.lab.root}, {os.cpu_count()} cores, load {load[0]:.1f}", flush=True)
        vmids = free_vmids(bench, args.images // 2)
        create_guests(bench.a, vmids, 2)
        cases = {"enable_scale": bench_scale_enable(bench, vmids)}
        waited = wait_copied(bench, images_of(vmids, 2))
        print(f"  site-b holds a copy of every image ({waited:.0f} s after the enable)")
        cases["status"], cases["status_prometheus"] = bench_status(bench, vmids)
        cases["reconcile"] = bench_reconcile(bench, len(vmids))
        cases["sync"] = bench_sync(bench, vmids)
        cases["enable"] = bench_enable(bench, args.guests)
        record("mirror_bench", vars(args), cases, load, args.json)


if __name__ == "__main__":
    main()
