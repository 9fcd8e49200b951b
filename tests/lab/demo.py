"""``make demo``: pve-mirror end to end on the two-site lab, shown as numbered steps.

The lab's two Ceph clusters replicate with rbd-mirror; each site has a simulated PVE
node whose guests are real qemu-io processes writing a heartbeat record every second
to their first disk. The demo runs what an admin runs: pair the sites, enable
mirroring of a librbd VM, a krbd VM and a container, sync their configs, fail them
over to site-b while they run, check that every heartbeat written on site-a is on
site-b (record checksums), let them run on site-b, and bring them home with a
failback, checking site-b's writes the same way.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from tests.lab.ceph_lab import CephLab, LabError
from tests.lab.drsetup import DrLab, setup_dr
from tests.lab.heartbeat import Record, read_heartbeats
from tests.lab.pve_site import KRBD_STORAGE, RBD_STORAGE, PveSite
from tests.lab.wait import WaitTimeoutError, wait_until

HOOK = "local:snippets/pve-mirror-hook"
# (CLI type, API type, VMID, disks, what it shows)
GUESTS = [
    ("vm", "qemu", 100, [(RBD_STORAGE, 32), (RBD_STORAGE, 16)], "VM on librbd (krbd 0)"),
    ("vm", "qemu", 101, [(KRBD_STORAGE, 32)], "VM on krbd (krbd 1)"),
    ("ct", "lxc", 200, [(KRBD_STORAGE, 32)], "container (always krbd)"),
]


class DemoError(Exception):
    """A step of the demo failed; the message says which and why."""


class Steps:
    """Prints numbered steps with their duration."""

    def __init__(self) -> None:
        self.number = 0

    def run(self, title: str, action: Callable[[], str | None]) -> None:
        """Print the step title, run ``action``, print its result and duration."""
        self.number += 1
        print(f"\n[{self.number}] {title}", flush=True)
        start = time.monotonic()
        text = action()
        if text:
            print("    " + text.strip().replace("\n", "\n    "))
        print(f"    ({time.monotonic() - start:.1f} s)", flush=True)


def pve_mirror(dr: DrLab, site: PveSite, *args: str, ok: tuple[int, ...] = (0,)) -> str:
    """Run ``pve-mirror`` on ``site`` as the admin would; give what it printed."""
    result = dr.cli(site, *args)
    shown = f"# {site.name}: pve-mirror {' '.join(args)}\n{result.out}{result.err}"
    if result.rc not in ok:
        raise DemoError(f"{shown}\n(exit {result.rc})")
    return shown + (f"(exit {result.rc})" if result.rc else "")


def heartbeats(site: PveSite, vmid: int) -> list[Record]:
    """Give the heartbeat records on the first disk of guest ``vmid`` at ``site``."""
    return read_heartbeats(site.ceph.conf, "rbd", f"vm-{vmid}-disk-0")


def digest(records: list[Record]) -> str:
    """Give a short sha256 over the records' (boot, seq, time): equal means same data."""
    text = "".join(
        f"{r.boot}:{r.seq}:{r.time:.3f};" for r in sorted(records, key=lambda r: (r.boot, r.seq))
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def api_start(site: PveSite, kind: str, vmid: int) -> str:
    """Start a guest through the site's PVE API and wait for the task; give its exitstatus."""
    api = site.api()
    node = site.guest_node(kind, vmid)
    upid = getattr(api.nodes(node), kind)(vmid).status.start.post()
    status: dict[str, object] = wait_until(
        lambda: (s := api.nodes(node).tasks(upid).status.get())["status"] == "stopped" and s,
        timeout=60,
        what=f"start task of {vmid} on {site.name}",
    )
    return str(status["exitstatus"])


def guest_state(site: PveSite, kind: str, vmid: int) -> str:
    """Give ``running on <node>``/``stopped on <node>`` of a guest, or ``absent``.

    The node comes from /cluster/resources, the status from status/current: the
    former's status is pvestatd's, up to a cycle old.
    """
    api = site.api()
    for item in api.cluster.resources.get(type="vm"):
        if int(item["vmid"]) == vmid and item["type"] == kind:
            now = getattr(api.nodes(item["node"]), kind)(vmid).status.current.get()
            return f"{now['status']} on {item['node']}"
    return "absent"


def compare_heartbeats(before: dict[int, list[Record]], after_site: PveSite) -> str:
    """Check that every record in ``before`` is on ``after_site``; give the checksum lines."""
    lines = []
    for vmid, records in before.items():
        found = {(r.boot, r.seq): r for r in heartbeats(after_site, vmid)}
        missing = [r for r in records if (r.boot, r.seq) not in found]
        got = [found[(r.boot, r.seq)] for r in records if (r.boot, r.seq) in found]
        lines.append(
            f"guest {vmid}: {len(records)} records written before, {len(got)} found on "
            f"{after_site.name}; sha256 before {digest(records)} after {digest(got)}"
        )
        if missing or digest(records) != digest(got):
            raise DemoError("\n".join(lines) + f"\n{len(missing)} record(s) LOST")
    return "\n".join(lines) + "\nno heartbeat lost"


def run_demo(lab: CephLab, keep: bool = False) -> int:
    """Run the demo on ``lab``; give the exit status (1 with the reason on failure)."""
    steps = Steps()
    holder: dict[str, DrLab] = {}
    try:
        started = time.monotonic()
        steps.run(
            "Bring up the two-site Ceph lab (site-a, site-b, rbd-mirror both ways)",
            lambda: f"{lab.up()} (took {time.monotonic() - started:.1f} s)",
        )

        def setup() -> str:
            holder["dr"] = setup_dr(lab)
            dr = holder["dr"]
            return (
                f"site-a: API {dr.a.api_url}, config root {dr.a.root}\n"
                f"site-b: API {dr.b.api_url}, config root {dr.b.root}\n"
                "pve-mirror site init run on both sites; hookscript installed"
            )

        steps.run("Start a simulated PVE node per site and pair the sites (site init)", setup)
        dr = holder["dr"]
        a, b = dr.a, dr.b
        steps.run("pve-mirror site status", lambda: pve_mirror(dr, a, "site", "status"))

        def create() -> str:
            lines = []
            for index, (_cli, kind, vmid, disks, what) in enumerate(GUESTS):
                node = a.nodes[index % len(a.nodes)]
                path = a.guest_config_path(kind, vmid, node)
                if not path.exists():
                    a.create_guest(kind, vmid, disks, hookscript=HOOK, node=node)
                lines.append(f"{vmid}: {what}, {len(disks)} disk(s) on {node} -> {path}")
            return "\n".join(lines)

        steps.run("Create three guests on site-a, one per node", create)
        steps.run("pve-mirror guests", lambda: pve_mirror(dr, a, "guests"))
        steps.run(
            "pve-mirror disks vm 101 (krbd: snapshot mode only)",
            lambda: pve_mirror(dr, a, "disks", "vm", "101"),
        )
        steps.run(
            "Journal mode is refused for the container, before anything changes",
            lambda: pve_mirror(dr, a, "enable", "ct", "200", "--mode", "journal", ok=(4,)),
        )

        def enable() -> str:
            out = pve_mirror(dr, a, "enable", "vm", "100", "101", "--schedule", "1m")
            out += "\n" + pve_mirror(dr, a, "enable", "ct", "200", "--schedule", "1m")
            out += "\n" + pve_mirror(dr, a, "hook", "install")
            return out

        steps.run("Enable mirroring (snapshot mode, every minute) and set the hookscript", enable)

        def start_all() -> str:
            lines = []
            for _cli, kind, vmid, _d, _w in GUESTS:
                if not guest_state(a, kind, vmid).startswith("running"):
                    lines.append(f"{vmid}: start task {api_start(a, kind, vmid)}")
            wait_until(
                lambda: all(len(heartbeats(a, g[2])) >= 3 for g in GUESTS),
                timeout=60,
                what="three heartbeats per guest",
            )
            counts = ", ".join(f"{g[2]}: {len(heartbeats(a, g[2]))}" for g in GUESTS)
            return "\n".join(lines) + f"\nheartbeat records so far: {counts}"

        steps.run("Start the guests on site-a through its PVE API; heartbeats run", start_all)
        steps.run("pve-mirror status (on site-a)", lambda: pve_mirror(dr, a, "status", ok=(0, 2)))
        steps.run(
            "pve-mirror sync: guest configs to site-b's staging area (rsync over SSH)",
            lambda: pve_mirror(dr, a, "sync"),
        )
        steps.run(
            "Planned failover, dry run (on site-b)",
            lambda: pve_mirror(dr, b, "failover", "--planned", "--all", "--dry-run"),
        )
        before: dict[int, list[Record]] = {}

        def failover() -> str:
            out = pve_mirror(dr, b, "failover", "--planned", "--all")
            for _cli, _kind, vmid, _d, _w in GUESTS:
                before[vmid] = [r for r in heartbeats(a, vmid) if r.kind == "heartbeat"]
            return out

        steps.run(
            "Planned failover to site-b (stop, final snapshot, demote, promote, start)", failover
        )

        def check_b() -> str:
            states = [
                f"{g[2]}: site-b {guest_state(b, g[1], g[2])}, site-a {guest_state(a, g[1], g[2])}"
                for g in GUESTS
            ]
            if any("site-b running" not in s or "site-a running" in s for s in states):
                raise DemoError("\n".join(states))
            text = compare_heartbeats(before, b)
            boots = {vmid: max(r.boot for r in recs) for vmid, recs in before.items() if recs}

            def moved_on() -> bool:
                return all(
                    any(r.boot > boots.get(g[2], 0) for r in heartbeats(b, g[2])) for g in GUESTS
                )

            wait_until(moved_on, timeout=60, what="new heartbeats on site-b")
            return "\n".join(states) + "\n" + text + "\nthe guests keep writing on site-b"

        steps.run("Guests run on site-b only; every heartbeat from site-a is there", check_b)
        steps.run(
            "The hook refuses to start a guest on site-a, whose disks are not primary",
            lambda: f"start task on site-a: {api_start(a, 'qemu', 100)}",
        )
        steps.run("pve-mirror status (on site-b)", lambda: pve_mirror(dr, b, "status", ok=(0, 2)))
        steps.run("pve-mirror sync from site-b back to site-a", lambda: pve_mirror(dr, b, "sync"))
        on_b: dict[int, list[Record]] = {}

        def failback() -> str:
            out = pve_mirror(dr, a, "failback", "--all")
            for _cli, _kind, vmid, _d, _w in GUESTS:
                on_b[vmid] = [r for r in heartbeats(b, vmid) if r.kind == "heartbeat"]
            return out

        steps.run(
            "Failback to site-a (stop, demote, resync if needed, verify, move home)", failback
        )

        def check_a() -> str:
            states = [
                f"{g[2]}: site-a {guest_state(a, g[1], g[2])}, site-b {guest_state(b, g[1], g[2])}"
                for g in GUESTS
            ]
            if any("site-a running" not in s or "site-b running" in s for s in states):
                raise DemoError("\n".join(states))
            homes = [f"{g[2]}: site-a running on {a.nodes[i % len(a.nodes)]}" for i, g in
                     enumerate(GUESTS)]  # fmt: skip
            if not all(home in state for home, state in zip(homes, states, strict=True)):
                raise DemoError("a guest did not come back to its node:\n" + "\n".join(states))
            return "\n".join(states) + "\n" + compare_heartbeats(on_b, a)

        steps.run(
            "Guests run on site-a again, each on its own node; every site-b heartbeat is there",
            check_a,
        )
        steps.run("pve-mirror status (on site-a)", lambda: pve_mirror(dr, a, "status", ok=(0, 2)))
    except (LabError, WaitTimeoutError, DemoError, RuntimeError) as exc:
        print(f"\ndemo FAILED: {exc}")
        if "dr" in holder:
            holder["dr"].stop()
        if not keep:
            print(lab.down())
        return 1
    if keep:
        print(f"\nlab kept up at {lab.root} (stop it with `python -m tests.lab down`)")
    else:
        holder["dr"].stop()
        steps.run("Take the lab down", lab.down)
    print("\ndemo finished: failover and failback without losing a heartbeat")
    return 0
