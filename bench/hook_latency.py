"""Latency of the pve-mirror hookscript's pre-start check, against the running lab.

Builds a VM with two mirrored RBD disks on site-a of the lab (PVE_MIRROR_LAB_DIR /
PVE_MIRROR_LAB_PORT_BASE select it; bring it up first with ``python3 -m tests.lab up``),
installs the hook with ``pve-mirror hook install`` and times, as PVE would run them
(one process per call):

- a no-op shell hook (``exit 0``): the floor of any hookscript;
- the installed snippet (``python3 -m pve_mirror.hookscript``) at pre-start;
- the same check through the full CLI (``python3 -m pve_mirror hook run``).

Prints median and p90 of each and the added latency over the no-op hook.

    PVE_MIRROR_LAB_DIR=/tmp/lab /usr/bin/python3 bench/hook_latency.py [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pve_mirror.ceph.access import ClusterAccess  # noqa: E402
from pve_mirror.ceph.cluster import connected  # noqa: E402
from pve_mirror.ceph.imagespec import ImageSpec  # noqa: E402
from pve_mirror.ceph.mirror import enable  # noqa: E402
from pve_mirror.cli.main import main as cli_main  # noqa: E402
from pve_mirror.pve.siteconfig import GuestEntry, load_site_config  # noqa: E402
from tests.lab.ceph_lab import CephLab  # noqa: E402
from tests.lab.drsetup import pvesh_of  # noqa: E402
from tests.lab.pve_site import RBD_STORAGE, PveSite  # noqa: E402

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def timed(argv: list[str], runs: int, env: dict[str, str], want: int = 0) -> list[float]:
    """Give the wall time in ms of ``runs`` runs of ``argv`` (after one warm-up)."""
    samples = []
    for index in range(runs + 1):
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        elapsed = (time.perf_counter() - started) * 1000
        if done.returncode != want:
            raise SystemExit(f"{argv}: exit {done.returncode}: {done.stderr.strip()}")
        if index:
            samples.append(elapsed)
    return samples


def p90(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    lab = CephLab()
    if not lab.is_up():
        raise SystemExit(f"the lab at {lab.root} is not up: python3 -m tests.lab up")
    ceph = lab.sites["site-a"]
    site = PveSite(ceph)
    site.start()  # hook install sets the hookscript through pvesh, on the simulator
    vmid = random.randint(10_000, 99_999)
    site.create_guest("qemu", vmid, [(RBD_STORAGE, 8), (RBD_STORAGE, 8)])
    images = [f"vm-{vmid}-disk-{i}" for i in range(2)]
    access = ClusterAccess(ceph.name, "admin", str(ceph.conf), tuple(ceph.rados_conf().items()))
    with connected(access) as cluster:
        for image in images:
            enable(cluster, ImageSpec(ceph.pool, "", image), "snapshot")
    cfg = load_site_config(site.root, required=False)
    cfg.set_section("site", ceph.name, {"peer": "site-b"})
    cfg.set_section("peer", "site-b", {"ssh": "root@127.0.0.1"})
    cfg.set_guest(GuestEntry("qemu", vmid))
    cfg.save()
    with pvesh_of(site):
        installed = cli_main(["--root", str(site.root), "hook", "install", "--output-format=json"])
    if installed != 0:
        raise SystemExit("hook install failed")
    noop = site.local_path / "snippets" / "noop-hook"
    noop.write_text("#!/bin/sh\nexit 0\n")
    noop.chmod(0o755)
    hook = site.local_path / "snippets" / "pve-mirror-hook"
    cli_env = dict(ENV, PYTHONPATH=str(REPO), PVE_MIRROR_ROOT=str(site.root))
    try:
        results = {
            "no-op shell hook": timed([str(noop), str(vmid), "pre-start"], args.runs, ENV),
            "python3 -c pass": timed(["/usr/bin/python3", "-c", "pass"], args.runs, ENV),
            "pve-mirror-hook pre-start (2 disks)": timed(
                [str(hook), str(vmid), "pre-start"], args.runs, ENV
            ),
            "pve-mirror hook run (full CLI)": timed(
                ["/usr/bin/python3", "-m", "pve_mirror", "hook", "run", str(vmid), "pre-start"],
                args.runs,
                cli_env,
            ),
        }
    finally:
        import rbd

        with ceph.ioctx() as ioctx:
            for image in images:
                with rbd.Image(ioctx, image) as handle:
                    handle.mirror_image_disable(True)
                rbd.RBD().remove(ioctx, image)
        site.guest_config_path("qemu", vmid).unlink()
    floor = statistics.median(results["no-op shell hook"])
    print(f"hook latency, {args.runs} runs each (ms), lab {lab.root}")
    for name, samples in results.items():
        median = statistics.median(samples)
        print(
            f"  {name:<38} median {median:7.1f}  p90 {p90(samples):7.1f}  "
            f"added {median - floor:7.1f}  ratio {median / floor:5.1f}x"
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("LC_ALL", "C")
    sys.exit(main())
