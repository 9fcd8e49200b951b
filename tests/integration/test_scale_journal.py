"""A run over 300 guests on real pmxcfs: every journal file stays far below 1 MiB.

pmxcfs refuses any write past 1 MiB (EFBIG). The journal of one run grew with the
number of guests (2.5-5 KB per guest), so one large run used to reach that limit
and fail half-way. This test runs ``enable`` and ``resync`` (the steps ``failback``
begins with) over 300 guests spread over three nodes, watching the journal files
while they grow.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.integration.dr_helpers import journal_dir, sync
from tests.integration.sites import Sites, next_vmid
from tests.lab.pve_site import RBD_STORAGE

GUESTS = 300
LIMIT = 1 << 20


class JournalWatch:
    """Polls a journal directory in a thread; keeps the largest file size seen."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.largest = (0, "")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.05)

    def sample(self) -> None:
        """Record the sizes of the journal files now."""
        if not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size > self.largest[0]:
                self.largest = (size, path.name)

    def __enter__(self) -> JournalWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def test_a_run_over_300_guests_keeps_every_journal_file_small(sites: Sites) -> None:
    a, b = sites.a, sites.b
    vmids = [next_vmid() for _ in range(GUESTS)]
    for vmid in vmids:
        a.create_guest("qemu", vmid, [(RBD_STORAGE, 1)], node=a.spread_node(vmid))
    ids = [str(v) for v in vmids]
    try:
        with JournalWatch(journal_dir(a)) as watch_a:
            started = time.monotonic()
            enabled = sites.cli(a, "enable", "vm", *ids, "--schedule", "1h")
            took_enable = time.monotonic() - started
        assert enabled.rc == 0, enabled.err[-2000:]
        sync(sites, a)
        with JournalWatch(journal_dir(b)) as watch_b:
            started = time.monotonic()
            resynced = sites.cli(b, "resync", "vm", *ids)
            took_resync = time.monotonic() - started
        assert resynced.rc == 0, resynced.out[-2000:] + resynced.err[-2000:]
        for site, watch in ((a, watch_a), (b, watch_b)):
            size, name = watch.largest
            assert 0 < size < LIMIT // 8, f"{site.name}: journal {name} reached {size} bytes"
        print(f"enable of {GUESTS} guests {took_enable:.1f} s, resync {took_resync:.1f} s; "
              f"largest journal files {watch_a.largest} {watch_b.largest}")  # fmt: skip
    finally:
        sites.cli(a, "disable", "vm", *ids, "--purge-peer")
        for vmid in vmids:
            a.guest_config_path("qemu", vmid, a.spread_node(vmid)).unlink(missing_ok=True)
        sync(sites, a)
