"""Speed of ``status`` and ``enable`` against the manual procedure, on the lab.

    .venv/bin/python -m bench.mirror_bench [--images 200] [--guests 20]

Prints ratios; asserts nothing.

- status: ``pve-mirror status`` (one process) for N mirrored images against a loop of
  one ``rbd mirror image status`` process per image, as the wiki's admin would type.
- enable: ``pve-mirror enable`` of G guests x 2 disks (one process, concurrent) against
  the wiki's loop of ``rbd mirror image enable <image> snapshot`` plus
  ``rbd mirror snapshot schedule add`` per image, on G other guests x 2 disks.
"""

from __future__ import annotations

import argparse

from bench.common import Bench, bench_sites, cli, free_vmids, ratio_line, rbd_cli, timed
from tests.lab.pve_site import RBD_STORAGE


def _guests(bench: Bench, vmids: list[int], disks: int) -> None:
    for vmid in vmids:
        bench.a.create_guest("qemu", vmid, [(RBD_STORAGE, 4)] * disks)


def bench_enable(bench: Bench, guests: int) -> str:
    vmids = free_vmids(bench, 2 * guests)
    ours, wiki = vmids[:guests], vmids[guests:]
    _guests(bench, vmids, 2)
    _, ours_s = timed(lambda: cli(bench.a, "enable", "vm", *map(str, ours), "--schedule", "5m"))

    def manual() -> None:
        for vmid in wiki:
            for disk in range(2):
                image = f"rbd/vm-{vmid}-disk-{disk}"
                rbd_cli(bench.a, "mirror", "image", "enable", image, "snapshot")
                rbd_cli(bench.a, "mirror", "snapshot", "schedule", "add", "--pool", "rbd",
                        "--image", f"vm-{vmid}-disk-{disk}", "5m")  # fmt: skip

    _, wiki_s = timed(manual)
    return ratio_line(f"enable {guests} guests x 2 disks", ours_s, wiki_s, 3)


def bench_status(bench: Bench, images: int) -> str:
    guests = images // 2
    vmids = free_vmids(bench, guests)
    _guests(bench, vmids, 2)
    for start in range(0, guests, 50):
        cli(bench.a, "enable", "vm", *map(str, vmids[start : start + 50]), "--schedule", "5m")
    # Warm both paths once (page cache, mgr), then time each.
    cli(bench.a, "status", "--output-format", "json")
    _, ours_s = timed(lambda: cli(bench.a, "status", "--output-format", "json"))

    def manual() -> None:
        for vmid in vmids:
            for disk in range(2):
                rbd_cli(bench.a, "mirror", "image", "status", f"rbd/vm-{vmid}-disk-{disk}",
                        "--format", "json")  # fmt: skip

    _, wiki_s = timed(manual)
    return ratio_line(f"status of {2 * guests} images", ours_s, wiki_s, 20)


def main() -> None:
    """Run both measurements and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--guests", type=int, default=20)
    args = parser.parse_args()
    with bench_sites() as bench:
        print(bench_enable(bench, args.guests), flush=True)
        print(bench_status(bench, args.images), flush=True)


if __name__ == "__main__":
    main()
