"""Latency of the pve-mirror hookscript's pre-start check, against the running lab.

Builds a VM with two mirrored RBD disks on site-a of the lab (PVE_MIRROR_LAB_DIR /
PVE_MIRROR_LAB_PORT_BASE select it; bring it up first with ``python3 -m tests.lab up``),
installs the hook with ``pve-mirror hook install`` and times, as PVE would run them
(one process per call):

- a no-op shell hook (``exit 0``): the floor of any hookscript;
- ``python3 -c pass`` and ``python3 -S -c pass``: the interpreter's start, with and
  without the site module (the snippet runs ``-S``);
- ``python3 -S`` importing what the hook imports at pre-start, nothing run: what is
  left of the hook's median after this one is its own work (configs, Ceph, exit);
- the installed snippet at pre-start (this site's check and the peer's: site-b's Ceph
  access is written where ``site init`` puts it);
- the same check through the full CLI (``python3 -m pve_mirror hook run``);
- with ``--baseline REV``, the same snippet running pve_mirror as it was at commit
  REV (``git archive`` into a temporary directory): a before/after in one run.

Prints median and p90 of each, the latency added to the no-op hook and the ratio
to it, and appends one JSON line to bench/results.jsonl (``--json`` another file,
``-`` none), which docs/performance.md tabulates. The samples of all variants are
taken in turns, so that a change of load on a shared machine hits them alike.

    PVE_MIRROR_LAB_DIR=/tmp/lab /usr/bin/python3 -m bench.hook_latency [--runs 30]
        [--baseline REV]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import record  # noqa: E402
from pve_mirror.actions.hook import snippet_text  # noqa: E402
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
GOAL_MS = 60.0
# What the hook's pre-start imports, as the snippet runs it (gc off, see hookscript.run)
# and ending as it does (os._exit: no interpreter teardown, no librados destructors).
HOOK_IMPORTS = (
    "import gc, os; gc.disable(); import pve_mirror.hookscript, pve_mirror.actions.hook, "
    "pve_mirror.pve.siteconfig; os._exit(0)"
)
HOOK = "pve-mirror-hook pre-start (2 disks)"
IMPORTS = "python3 -S, the hook's imports only"


def once(argv: list[str], env: dict[str, str], want: int = 0) -> float:
    """Give the wall time in ms of one run of ``argv``; exit if it does not end ``want``."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode != want:
        raise SystemExit(f"{argv}: exit {done.returncode}: {done.stderr.strip()}")
    return elapsed


def in_turns(
    variants: dict[str, tuple[list[str], dict[str, str]]], runs: int
) -> dict[str, list[float]]:
    """Give ``runs`` samples (ms) of every variant, run in turns after one warm-up round."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for index in range(runs + 1):
        for name, (argv, env) in variants.items():
            elapsed = once(argv, env)
            if index:
                samples[name].append(elapsed)
    return samples


def baseline_hook(rev: str, root: Path, into: Path) -> Path:
    """Give a hookscript running pve_mirror as of commit ``rev``, written under ``into``
    (the package extracted there and byte-compiled, as the .deb leaves it)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "pve_mirror"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    subprocess.run(["/usr/bin/python3", "-m", "compileall", "-q", str(into)], check=True)
    script = into / "pve-mirror-hook"
    script.write_text(snippet_text(str(root), str(into)))
    script.chmod(0o755)
    return script


def p90(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", metavar="FILE", help="where the JSON line goes ('-': none)")
    parser.add_argument("--baseline", metavar="REV", help="also time the hook as of commit REV")
    args = parser.parse_args()
    load = os.getloadavg()
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
    # The peer's Ceph access, as 'site init' leaves it: a start at the primary site also
    # asks the peer whether it holds the disks as primary too.
    peer_ceph = lab.sites["site-b"]
    priv = site.root / "priv" / "pve-mirror"
    priv.mkdir(parents=True, exist_ok=True)
    (priv / "site-b.conf").write_text(peer_ceph.conf.read_text())
    (priv / "site-b.keyring").write_text(peer_ceph.admin_keyring.read_text())
    with pvesh_of(site), contextlib.redirect_stdout(io.StringIO()):
        installed = cli_main(["--root", str(site.root), "hook", "install", "--output-format=json"])
    if installed != 0:
        raise SystemExit("hook install failed")
    noop = site.local_path / "snippets" / "noop-hook"
    noop.write_text("#!/bin/sh\nexit 0\n")
    noop.chmod(0o755)
    hook = site.local_path / "snippets" / "pve-mirror-hook"
    cli_env = dict(ENV, PYTHONPATH=str(REPO), PVE_MIRROR_ROOT=str(site.root))
    imports_env = dict(ENV, PYTHONPATH=f"{REPO}:/usr/lib/python3/dist-packages")
    cli_argv = ["/usr/bin/python3", "-m", "pve_mirror", "hook", "run", str(vmid), "pre-start"]
    variants: dict[str, tuple[list[str], dict[str, str]]] = {
        "no-op shell hook": ([str(noop), str(vmid), "pre-start"], ENV),
        "python3 -c pass": (["/usr/bin/python3", "-c", "pass"], ENV),
        "python3 -S -c pass": (["/usr/bin/python3", "-S", "-c", "pass"], ENV),
        IMPORTS: (["/usr/bin/python3", "-S", "-c", HOOK_IMPORTS], imports_env),
    }
    scratch = tempfile.TemporaryDirectory(prefix="hook-baseline-")
    if args.baseline:
        # Next to the current hook in every turn, so that a change of load hits both alike.
        old = baseline_hook(args.baseline, site.root, Path(scratch.name))
        variants[f"{HOOK}, code of {args.baseline}"] = ([str(old), str(vmid), "pre-start"], ENV)
    variants[HOOK] = ([str(hook), str(vmid), "pre-start"], ENV)
    variants["pve-mirror hook run (full CLI)"] = (cli_argv, cli_env)
    try:
        results = in_turns(variants, args.runs)
    finally:
        scratch.cleanup()
        import rbd

        with ceph.ioctx() as ioctx:
            for image in images:
                with rbd.Image(ioctx, image) as handle:
                    handle.mirror_image_disable(True)
                rbd.RBD().remove(ioctx, image)
        site.guest_config_path("qemu", vmid).unlink()
    floor = statistics.median(results["no-op shell hook"])
    print(f"hook latency, {args.runs} runs each (ms), lab {lab.root}, load {load[0]:.1f}")
    cases = {}
    for name, samples in results.items():
        median = statistics.median(samples)
        print(
            f"  {name:<38} median {median:7.1f}  p90 {p90(samples):7.1f}  "
            f"added {median - floor:7.1f}  ratio {median / floor:5.1f}x"
        )
        cases[name] = {
            "runs": len(samples),
            "median_ms": round(median, 1),
            "p90_ms": round(p90(samples), 1),
            "ratio": round(median / floor, 1),
        }
    hook_ms = cases[HOOK]["median_ms"]
    start_ms = cases["python3 -S -c pass"]["median_ms"]
    imports_ms = cases[IMPORTS]["median_ms"]
    print(
        f"where the pre-start median goes: interpreter {start_ms:.1f}, imports "
        f"{imports_ms - start_ms:.1f}, configs + Ceph + exit {hook_ms - imports_ms:.1f} ms"
    )
    verdict = "meets" if hook_ms < GOAL_MS else "MISSES"
    print(f"pre-start median {hook_ms:.1f} ms ({verdict} the goal of {GOAL_MS:g} ms)")
    record("hook_latency", vars(args), cases, load, args.json)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("LC_ALL", "C")
    sys.exit(main())
