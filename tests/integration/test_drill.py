"""Issue 13 on the real two-site lab: DR drills at site-b of guests running on site-a.

A drill copies the newest complete replicated data of each disk to new images at
site-b, runs the guests from them under drill VMIDs with their network unplugged,
and ``drill stop`` removes all of it. Proven here: the drill guests run and their
disks hold exactly the data site-a had at the replicated snapshot (heartbeat records);
production is untouched (mirror state, primary flags, schedules, peers, snapshots and
every config byte on both sites); replication goes on during the drill; stop leaves
nothing; an interrupted drill is cleaned (or continued) by a rerun.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import rbd

from tests.integration.dr_helpers import (
    PYTHON,
    REPO,
    Guest,
    cli_env,
    create,
    current,
    enable,
    run_cli,
    running,
    start,
    stop_everywhere,
    sync,
    wait_beats,
)
from tests.integration.sites import Sites, next_vmid
from tests.lab import heartbeat, rbdtools
from tests.lab.pve_site import KRBD_STORAGE, RBD_STORAGE, PveSite
from tests.lab.wait import wait_until

DRILL_IMAGE = re.compile(r"vm-\d+-pve-mirror-drill-")


@contextlib.contextmanager
def cleanup(sites: Sites, *guests: Guest) -> Iterator[None]:
    """Afterwards: stop any drill at site-b and the guests, so the shared lab stays light."""
    try:
        yield
    finally:
        sites.cli(sites.b, "drill", "stop")
        stop_everywhere(sites, guests)


def running_on_a(sites: Sites, guests: list[Guest], beats: int = 3) -> dict[Guest, int]:
    """Enable and start ``guests`` on site-a, sync their configs, replicate a fresh snapshot.

    Gives each guest's boot id on site-a.
    """
    a, b = sites.a, sites.b
    enable(sites, a, guests, schedule="1h")
    for guest in guests:
        start(a, guest)
    boots = {guest: wait_beats(a, guest, beats) for guest in guests}
    sync(sites, a)
    for guest in guests:
        for image in guest.images:
            rbdtools.create_mirror_snapshot(a.ceph, image)
            rbdtools.wait_replicated(a.ceph, b.ceph, image, timeout=120)
    return boots


def runs_on(site: PveSite, guest: Guest) -> bool:
    """Tell whether ``site``'s API shows the guest running, on whichever node it lives."""
    return bool(current(site, guest).get("status") == "running")


def words(guests: list[Guest]) -> list[str]:
    """Give ``vm:301 ct:302 ...``, how the CLI takes guests of both kinds."""
    return [guest.label for guest in guests]


def production(sites: Sites, guests: list[Guest]) -> dict[str, Any]:
    """Give everything a drill must not change, on both sites.

    Per image: mirroring state, mode, primary flag, global id and the snapshots that
    are not mirror snapshots (a drill must add none); per site: snapshot schedules,
    mirror peers, and the bytes of every guest config (every node; drill guests left
    out), pve-mirror.cfg, storage.cfg and the staging area.
    """
    out: dict[str, Any] = {}
    for site in (sites.a, sites.b):
        for guest in guests:
            for image in guest.images:
                with rbdtools.open_image(site.ceph, image, read_only=True) as img:
                    info = img.mirror_image_get_info()
                    others = sorted(
                        str(s["name"])
                        for s in img.list_snaps()
                        if s.get("namespace") != rbd.RBD_SNAP_NAMESPACE_TYPE_MIRROR
                    )
                    out[f"{site.name} {image}"] = (
                        info["global_id"], info["state"], info["primary"],
                        img.mirror_image_get_mode(), others,
                    )  # fmt: skip
        pool = site.ceph.pool
        out[f"{site.name} schedules"] = site.ceph.cli(
            "rbd", "mirror", "snapshot", "schedule", "ls", "--pool", pool, "--recursive",
            "--format", "json",
        )  # fmt: skip
        peers = json.loads(site.ceph.cli("rbd", "mirror", "pool", "info", pool, "--format", "json"))
        out[f"{site.name} peers"] = peers
        files = [site.root / "pve-mirror.cfg", site.root / "storage.cfg"]
        files += sorted(site.root.glob("nodes/*/qemu-server/*.conf"))
        files += sorted(site.root.glob("nodes/*/lxc/*.conf"))
        files += sorted((site.root / "pve-mirror" / "staging").rglob("*"))
        for path in files:
            data = path.read_bytes() if path.is_file() else b""
            # a drill guest's own config (a production config tagged would go missing here)
            if data and b"pve-mirror-drill" not in data:
                out[str(path)] = data
    return out


def drill_leftovers(site: PveSite) -> list[str]:
    """Give every drill image (also in the trash) and tagged config at ``site``, searched
    independently of pve-mirror."""
    found = []
    with site.ceph.ioctx() as ioctx:
        found += [n for n in rbd.RBD().list(ioctx) if DRILL_IMAGE.match(n)]
        found += [f"trash {e['name']}" for e in rbd.RBD().trash_list(ioctx)
                  if DRILL_IMAGE.match(e["name"])]  # fmt: skip
    for path in site.root.glob("nodes/*/*/*.conf"):
        if "pve-mirror-drill" in path.read_text(errors="replace"):
            found.append(str(path))
    if (site.root / "pve-mirror" / "drill" / "drill.json").exists():
        found.append("drill.json")
    return found


def drill_guest(row: dict[str, Any]) -> Guest:
    """Give the drill guest of a status/report row as a lab Guest (its kind and VMID)."""
    word, vmid = row["drill_guest"].split(":")
    return Guest("qemu" if word == "vm" else "lxc", int(vmid), len(row["images"]))


def primary_records(sites: Sites, guest: Guest, image_row: dict[str, Any]) -> set[tuple[int, int]]:
    """Give the heartbeat seqs of ``guest`` in site-a's primary snapshot the drill copied."""
    a = sites.a
    snap = int(image_row["primary_snap_id"])
    got = heartbeat.read_heartbeats(a.ceph.conf, a.ceph.pool, guest.image, snap_id=snap)
    return {(r.boot, r.seq) for r in got if r.vmid == guest.vmid}


def drill_records(site: PveSite, image: str, vmid: int) -> set[tuple[int, int]]:
    """Give (boot, seq) of the heartbeats of guest ``vmid`` on ``site``'s image ``image``."""
    got = heartbeat.read_heartbeats(site.ceph.conf, site.ceph.pool, image.split("/")[-1])
    return {(r.boot, r.seq) for r in got if r.vmid == vmid}


def test_a_drill_runs_replicated_guests_at_b_and_leaves_nothing(sites: Sites) -> None:
    a, b = sites.a, sites.b
    vm = create(a, "qemu", next_vmid(), [RBD_STORAGE, KRBD_STORAGE])
    ct = create(a, "lxc", next_vmid(), [KRBD_STORAGE])
    guests = [vm, ct]
    with cleanup(sites, *guests):
        boots = running_on_a(sites, guests)
        before = production(sites, guests)

        dry = sites.cli(b, "drill", "start", *words(guests), "--dry-run", "--output-format", "json")
        assert dry.rc == 0, dry.out + dry.err
        kinds = [s["kind"] for s in dry.json()["plan"]["steps"]]
        assert kinds.count("drill-copy") == 3 and kinds.count("drill-start") == 2, kinds
        every = sites.cli(b, "drill", "start", "--all", "--dry-run", "--output-format", "json")
        assert every.rc == 0, every.out + every.err  # guests it cannot run are left out
        assert {vm.label, ct.label} <= {s["guest"] for s in every.json()["plan"]["steps"]}
        assert drill_leftovers(b) == [], "a dry run must change nothing"

        started = sites.cli(b, "drill", "start", *words(guests), "--output-format", "json")
        assert started.rc == 0, started.out + started.err
        status = started.json()["status"]
        assert status["phase"] == "running"
        rows = {row["guest"]: row for row in status["guests"]}
        for guest in guests:
            row = rows[guest.label]
            assert row["running"], row
            drill = drill_guest(row)
            assert running(b, drill), f"drill guest {drill.label} does not run on site-b"
            assert runs_on(a, guest) and not b.guest_config_path(guest.kind, guest.vmid).exists()
            config = b.guest_config_path(drill.kind, drill.vmid).read_text()
            assert "pve-mirror-drill" in config and "hookscript" not in config
            assert "onboot: 0" in config and "link_down=1" in config, config
            assert f"vm-{drill.vmid}-pve-mirror-drill-{guest.image}" in config
            # the copy holds exactly site-a's records up to the replicated snapshot...
            first = row["images"][0]
            want = primary_records(sites, guest, first)
            got = drill_records(b, first["drill_image"], guest.vmid)
            assert want and got == want, f"{guest.label}: {sorted(want ^ got)[:5]}"
            assert {seq for boot, seq in got if boot == boots[guest]} >= {0, 1, 2}
            # ...and the drill guest writes its own records on it (a writable copy)
            own = functools.partial(drill_records, b, str(first["drill_image"]), drill.vmid)
            wait_until(own, timeout=30, what=f"heartbeats of drill guest {drill.label}")

        again = sites.cli(b, "drill", "start", *words(guests))
        assert again.rc == 4 and "run 'pve-mirror drill stop' first" in again.err, again.err

        # replication goes on: a new snapshot of site-a reaches site-b during the drill
        for guest in guests:
            for image in guest.images:
                rbdtools.create_mirror_snapshot(a.ceph, image)
                rbdtools.wait_replicated(a.ceph, b.ceph, image, timeout=120)
        now = sites.cli(b, "drill", "status", "--output-format", "json")
        assert now.rc == 0, now.err
        for row in now.json()["guests"]:
            assert row["running"], row
            for disk in row["images"]:
                assert disk["replication"]["synced_since_copy"] >= 1, disk
                assert disk["replication"]["primary_here"] is False
        text = sites.cli(b, "drill", "status")
        assert f"Drill {status['drill']} at site-b (running)" in text.out, text.out
        assert production(sites, guests) == before, "the drill changed production"

        stopped = sites.cli(b, "drill", "stop", "--output-format", "json")
        assert stopped.rc == 0, stopped.out + stopped.err
        report = stopped.json()["report"]
        assert report["id"] == status["drill"] and report["leftovers"] == []
        assert report["all_running"], report
        removed = report["removed"]
        assert sum(item.startswith("image ") for item in removed) == 3, removed
        assert sum(item.startswith("config ") for item in removed) == 2, removed
        assert drill_leftovers(b) == []
        assert production(sites, guests) == before, "the drill changed production"
        kept = sites.cli(b, "drill", "report", status["drill"])
        assert kept.rc == 0 and "Leftovers: none" in kept.out, kept.out + kept.err
        for guest in guests:
            assert runs_on(a, guest)


# Runs the CLI and SIGKILLs its own process right after the k-th journalled "done".
CRASH_DRIVER = """
import os, signal, sys, threading
from pve_mirror.engine import journal
from pve_mirror.cli.main import main

k, record, count, lock = int(os.environ["CRASH_AT"]), journal.Journal.record, [0], threading.Lock()

def record_or_die(self, step_id, event, detail=""):
    with lock:
        record(self, step_id, event, detail)
        count[0] += event == "done"
        if count[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)

journal.Journal.record = record_or_die
sys.exit(main(sys.argv[1:]))
"""


def crashed(site: PveSite, k: int, *args: str) -> None:
    """Run ``pve-mirror ARGS`` on ``site`` as a process SIGKILLed after its k-th step."""
    argv = [PYTHON, "-c", CRASH_DRIVER, "--root", str(site.root), *args]
    done = subprocess.run(argv, cwd=REPO, env={**cli_env(), "CRASH_AT": str(k)},
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, f"not killed after step {k}: {done.stderr}"


def crashed_start(site: PveSite, guest: Guest, k: int) -> None:
    """Run ``drill start`` for ``guest`` as a process SIGKILLed after its k-th step."""
    crashed(site, k, "drill", "start", guest.label)


def test_an_interrupted_drill_is_cleaned_or_continued_by_a_rerun(sites: Sites) -> None:
    a, b = sites.a, sites.b
    vm = create(a, "qemu", next_vmid(), [RBD_STORAGE])
    with cleanup(sites, vm):
        running_on_a(sites, [vm], beats=2)
        before = production(sites, [vm])
        # steps: 1 record, 2 copy, 3 config, 4 start, 5 mark running
        for k in (2, 3, 4):
            crashed_start(b, vm, k)
            left = drill_leftovers(b)
            assert "drill.json" in left and any(DRILL_IMAGE.match(x) for x in left), (k, left)
            if k == 4:
                # a lost record: stop still finds the guest by its tag, the image by its name
                (b.root / "pve-mirror" / "drill" / "drill.json").unlink()
            stopped = run_cli(b, "drill", "stop", "--output-format", "json")
            assert stopped.returncode == 0, f"after step {k}: {stopped.stdout}{stopped.stderr}"
            report = json.loads(stopped.stdout)["report"]
            assert report["leftovers"] == [], report
            assert drill_leftovers(b) == [], (k, drill_leftovers(b))
            assert production(sites, [vm]) == before, f"after step {k}: production changed"

        # a rerun of the same start continues the interrupted one
        crashed_start(b, vm, 2)
        rerun = run_cli(b, "drill", "start", vm.label, "--output-format", "json")
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "continuing the unfinished run" in rerun.stderr
        outcomes = {
            o["step"].split(":")[0]: o["status"] for o in json.loads(rerun.stdout)["outcomes"]
        }
        assert outcomes["drill-copy"] == "already-done" and outcomes["drill-start"] == "done"
        row = json.loads(rerun.stdout)["status"]["guests"][0]
        assert row["running"] and running(b, drill_guest(row))
        # a stop killed after removing everything (stop, config, image) but before its
        # proof is finished by a rerun, whose report lists what the first run removed
        crashed(b, 3, "drill", "stop")
        assert drill_leftovers(b) == ["drill.json"]
        stopped = run_cli(b, "drill", "stop", "--output-format", "json")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        report = json.loads(stopped.stdout)["report"]
        assert report["leftovers"] == [] and len(report["removed"]) == 2, report
        assert {item.split()[0] for item in report["removed"]} == {"config", "image"}
        assert drill_leftovers(b) == []
        assert production(sites, [vm]) == before
