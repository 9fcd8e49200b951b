"""What the failover tests share: guests on a lab site, their heartbeats, the CLI as a
process, the journal of a running failover.

A guest here is created with the pve-mirror hookscript, enabled with the CLI and
started through its site's API simulator, so its qemu-io "kvm" writes one heartbeat
record per second into its first disk (tests/lab/heartbeat.py).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.lab import heartbeat
from tests.lab.drsetup import DrLab
from tests.lab.pve_site import PveSite
from tests.lab.wait import wait_until

PYTHON = "/usr/bin/python3"
REPO = Path(__file__).resolve().parents[2]
HOOKSCRIPT = "local:snippets/pve-mirror-hook"
DISK_MIB = 16
CLI_TIMEOUT = 600.0


@dataclass(frozen=True)
class Guest:
    """A lab guest: ``kind`` is ``qemu`` or ``lxc``."""

    kind: str
    vmid: int
    disks: int = 1

    @property
    def word(self) -> str:
        """Give ``vm`` or ``ct`` (what the CLI takes)."""
        return "vm" if self.kind == "qemu" else "ct"

    @property
    def label(self) -> str:
        """Give ``vm:301`` / ``ct:303`` (the plan's group of this guest)."""
        return f"{self.word}:{self.vmid}"

    @property
    def images(self) -> list[str]:
        """Give the names of its images."""
        return [f"vm-{self.vmid}-disk-{i}" for i in range(self.disks)]

    @property
    def image(self) -> str:
        """Give the image of its first disk (where the heartbeats go)."""
        return self.images[0]


def create(site: PveSite, kind: str, vmid: int, storages: Iterable[str]) -> Guest:
    """Create a guest with one 16 MiB disk per storage and the pve-mirror hookscript.

    The site's nodes take turns (by VMID), so the tests cover guests on every node.
    """
    disks = [(storage, DISK_MIB) for storage in storages]
    site.create_guest(kind, vmid, disks, hookscript=HOOKSCRIPT, node=site.spread_node(vmid))
    return Guest(kind, vmid, len(disks))


def enable(lab: DrLab, site: PveSite, guests: Iterable[Guest], schedule: str = "5m") -> None:
    """Enable mirroring of ``guests`` on ``site`` (one call per kind), then ``hook install``."""
    by_word: dict[str, list[str]] = {}
    for guest in guests:
        by_word.setdefault(guest.word, []).append(str(guest.vmid))
    for word, vmids in by_word.items():
        result = lab.cli(site, "enable", word, *vmids, "--schedule", schedule)
        assert result.rc == 0, result.err
    installed = lab.cli(site, "hook", "install")
    assert installed.rc == 0, installed.err


def sync(lab: DrLab, site: PveSite) -> None:
    """Push ``site``'s guest configs to the peer's staging area."""
    result = lab.cli(site, "sync")
    assert result.rc == 0, result.out + result.err


# --- the simulator's API ------------------------------------------------------------------


def _guest_api(site: PveSite, guest: Guest) -> Any:
    node = site.guest_node(guest.kind, guest.vmid)
    return getattr(site.api().nodes(node), guest.kind)(guest.vmid)


def _upid_node(upid: str) -> str:
    """Give the node a task runs on (``UPID:<node>:...``)."""
    return upid.split(":")[1]


def wait_task(site: PveSite, upid: str, timeout: float = 120.0) -> dict[str, Any]:
    """Poll a task of ``site`` until it stopped; give its status (``exitstatus``)."""
    api = site.api()

    def done() -> dict[str, Any] | None:
        status: dict[str, Any] = api.nodes(_upid_node(upid)).tasks(upid).status.get()
        return status if status["status"] == "stopped" else None

    return wait_until(done, timeout=timeout, what=f"task {upid} on {site.name}", interval=0.05)


def task_log(site: PveSite, upid: str) -> str:
    """Give a task's log as one text."""
    lines = site.api().nodes(_upid_node(upid)).tasks(upid).log.get(limit=500)
    return "\n".join(str(line["t"]) for line in lines)


def api_start(site: PveSite, guest: Guest) -> tuple[str, str]:
    """Start the guest through the API; give the task's exitstatus and log."""
    upid = str(_guest_api(site, guest).status.start.post())
    status = wait_task(site, upid)
    return str(status.get("exitstatus")), task_log(site, upid)


def start(site: PveSite, guest: Guest) -> None:
    """Start the guest through the API; fail the test if the start task fails."""
    exitstatus, log = api_start(site, guest)
    assert exitstatus == "OK", f"start of {guest.label} on {site.name}: {exitstatus}\n{log}"


def stop(site: PveSite, guest: Guest) -> None:
    """Stop the guest through the API (a no-op task if it is not running)."""
    wait_task(site, str(_guest_api(site, guest).status.stop.post()))


def current(site: PveSite, guest: Guest) -> dict[str, Any]:
    """Give the guest's ``status/current`` on ``site``."""
    data: dict[str, Any] = _guest_api(site, guest).status.current.get()
    return data


def running(site: PveSite, guest: Guest) -> bool:
    """Tell whether ``site``'s API shows the guest running (False if it has no config there)."""
    node = site.guest_node(guest.kind, guest.vmid)
    if not site.guest_config_path(guest.kind, guest.vmid, node).exists():
        return False
    return current(site, guest).get("status") == "running"


def start_requests(site: PveSite, guest: Guest) -> int:
    """Give how many start requests ``site``'s simulator received for the guest (its log)."""
    word = "VM" if guest.kind == "qemu" else "CT"
    log = (site.scratch / "pvesim.log").read_text(errors="replace")
    return log.count(f"start {word} {guest.vmid}: task ")


def stop_everywhere(lab: DrLab, guests: Iterable[Guest]) -> None:
    """Stop the guests on both sites where they run (cleanup; ignores what cannot be done)."""
    for site in (lab.a, lab.b):
        if not site.running():
            continue
        for guest in guests:
            try:
                if running(site, guest):
                    stop(site, guest)
            except Exception:  # noqa: BLE001 - best-effort cleanup, the test result stands
                pass


# --- heartbeats ---------------------------------------------------------------------------


def records(site: PveSite, guest: Guest) -> list[heartbeat.Record]:
    """Give the heartbeat records on ``site``'s copy of the guest's first disk."""
    return heartbeat.read_heartbeats(site.ceph.conf, site.ceph.pool, guest.image)


def runs(site: PveSite, guest: Guest) -> dict[int, set[int]]:
    """Give the guest's heartbeat runs on ``site``'s copy: boot -> sequence numbers."""
    out: dict[int, set[int]] = {}
    for record in records(site, guest):
        if record.vmid == guest.vmid:
            out.setdefault(record.boot, set()).add(record.seq)
    return out


def wait_beats(site: PveSite, guest: Guest, count: int, exclude: Iterable[int] = ()) -> int:
    """Wait until a run (boot not in ``exclude``) has ``count`` beats on ``site``; give its boot."""
    old = set(exclude)

    def ready() -> int | None:
        fresh = {b: s for b, s in runs(site, guest).items() if b not in old}
        for boot, seqs in fresh.items():
            if len(seqs) >= count:
                return boot
        return None

    return wait_until(ready, timeout=60, what=f"{count} heartbeats of {guest.label} on {site.name}")


# --- the CLI as its own process -------------------------------------------------------------


def cli_argv(site: PveSite, *args: str) -> list[str]:
    """Give the argv of ``pve-mirror --root <site root> ARGS`` under /usr/bin/python3."""
    return [PYTHON, "-m", "pve_mirror", "--root", str(site.root), *args]


def cli_env() -> dict[str, str]:
    """Give the environment of a CLI process: this repository on PYTHONPATH."""
    return {**os.environ, "PYTHONPATH": str(REPO), "LC_ALL": "C"}


def popen_cli(site: PveSite, *args: str) -> subprocess.Popen[str]:
    """Start ``pve-mirror`` on ``site`` as a process (stdout and stderr piped)."""
    return subprocess.Popen(
        cli_argv(site, *args),
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(site: PveSite, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``pve-mirror`` on ``site`` as a process to its end."""
    return subprocess.run(
        cli_argv(site, *args), cwd=REPO, env=cli_env(), capture_output=True, text=True,
        timeout=CLI_TIMEOUT, check=False,
    )  # fmt: skip


def journal_dir(site: PveSite) -> Path:
    """Give ``<root>/pve-mirror/journal`` of a site."""
    return site.root / "pve-mirror" / "journal"


def open_journals(site: PveSite, action: str = "failover") -> set[Path]:
    """Give the unfinished journals of ``action`` on ``site``."""
    directory = journal_dir(site)
    return set(directory.glob(f"{action}-*.jsonl")) if directory.is_dir() else set()


def done_steps(journal: Path) -> list[str]:
    """Give the ids of the steps a journal records as done, in order (torn lines skipped)."""
    import json

    out: list[str] = []
    try:
        text = journal.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "done":
            out.append(str(entry["step"]))
    return out


@contextlib.contextmanager
def mirror_paused(lab: DrLab, site: PveSite) -> Iterator[None]:
    """Stop ``site``'s rbd-mirror daemon for the block (started again after).

    While it is stopped nothing replicates *to* ``site``: its images keep exactly what
    they held, e.g. the old primary's state at the moment of a failover.
    """
    lab.lab.stop_mirror_daemon(site.name)
    try:
        yield
    finally:
        lab.lab.start_mirror_daemon(site.name)
