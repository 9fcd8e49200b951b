"""A stand-in for pvestatd's status cache: what /cluster/resources reports about guests.

pve-manager's PVE::API2::Cluster ``resources`` takes a guest's status, name and uptime
from the RRD data pvestatd broadcasts every 10 s (PVE::Service::pvestatd
update_qemu_status, $updatetime = 10), not from the guest: the status there can be
up to a cycle old, is ``unknown`` for a guest that has no data yet
(PVE::API2Tools::extract_vm_stats), and for a running VM it is QEMU's run state
(``$d->{qmpstatus} || $d->{status}``): ``paused``, ``io-error``, ``prelaunch``,
``suspended`` as well as ``running``. Only ``lock`` and ``tags`` are read live from
the configs (PVE::Cluster::get_guest_config_properties).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("pvesim.rrd")

DEFAULT_INTERVAL = 10.0


@dataclass(frozen=True)
class VmStats:
    """One guest's entry of a status cycle."""

    status: str
    name: str
    uptime: int
    template: int
    at: float


# Gives (vmid -> stats) as the guests are right now.
Collector = Callable[[], dict[int, VmStats]]


class StatusCache:
    """The guest statuses of the last cycle, refreshed every ``interval`` seconds."""

    def __init__(self, collect: Collector, interval: float = DEFAULT_INTERVAL) -> None:
        self.collect = collect
        self.interval = interval
        self._lock = threading.Lock()
        self._stats: dict[int, VmStats] = {}
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, vmid: int) -> VmStats | None:
        """Give the guest's stats of the last cycle (None: no data, status ``unknown``)."""
        with self._lock:
            return self._stats.get(vmid)

    def update(self) -> None:
        """Run one cycle now."""
        stats = self.collect()
        with self._lock:
            self._stats = stats

    def start(self) -> None:
        """Run the cycles in a daemon thread; the first one at once."""
        self._thread = threading.Thread(target=self._loop, name="pvestatd", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the cycles."""
        self._halt.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                self.update()
            except Exception:
                log.exception("status update failed")
            if self._halt.wait(max(0.0, self.interval - (time.monotonic() - started))):
                return
