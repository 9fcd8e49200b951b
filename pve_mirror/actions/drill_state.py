"""The record of a DR drill in ``<root>/pve-mirror/drill/``, and its reports.

``drill.json`` says which drill runs: its id, the guests with their drill VMIDs,
nodes and images, what each copy was made from and when each guest ran. It is
written before the first image is copied and removed only once ``drill stop`` has
proven that nothing is left, so an interrupted drill is always found again (and
leftovers are found even without it: drill images by name, configs by tag).

pmxcfs holds files of at most 1 MiB, forces mode 0640 and has no symlinks: the state
is one compact JSON file written atomically (a few hundred bytes per guest), and each
finished drill leaves ``reports/<id>.json``; the newest :data:`KEEP_REPORTS` are kept.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pve_mirror.errors import ConfigError, NotFoundError
from pve_mirror.files import fs_error, write_atomic

DRILL_DIR = Path("pve-mirror") / "drill"
STATE_FILE = "drill.json"
REPORTS_DIR = "reports"
KEEP_REPORTS = 50
FORMAT = 1
STARTING, RUNNING = "starting", "running"
_DRILL_ID = re.compile(r"\d{8}-\d{6}(-leftovers)?", re.ASCII)


@dataclass
class DrillImage:
    """One drill copy: the local storage, the replicated image and its copy."""

    storage: str
    source: str  # pool[/namespace]/image, non-primary here
    dest: str  # pool[/namespace]/vm-<drill vmid>-pve-mirror-drill-<image>
    key: str = ""  # the disk key in the guest config (scsi0, rootfs)
    copy: dict[str, Any] | None = None  # copy.CopyResult.to_dict() once copied


@dataclass
class DrillGuest:
    """One guest of the peer and its drill guest here."""

    source: str  # vm:301
    kind: str  # qemu, lxc
    vmid: int
    drill_vmid: int
    node: str
    order: int
    images: list[DrillImage] = field(default_factory=list)
    config: str | None = None
    start_requested: float | None = None
    running_at: float | None = None
    start_seconds: float | None = None

    @property
    def label(self) -> str:
        """Give ``vm:9000``, the drill guest's ID."""
        return f"{'vm' if self.kind == 'qemu' else 'ct'}:{self.drill_vmid}"

    @property
    def data_time(self) -> float | None:
        """Give the time of the oldest data among its disks (None until all are copied)."""
        times = [i.copy.get("data_time") for i in self.images if i.copy]
        if len(times) != len(self.images) or not times or None in times:
            return None
        return min(float(t) for t in times if t is not None)


@dataclass
class DrillState:
    """A drill that is starting, running or being stopped."""

    id: str
    site: str
    peer: str
    created: float
    phase: str = STARTING
    bridge: str | None = None
    running_at: float | None = None
    guests: list[DrillGuest] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # by drill stop, for the report
    format: int = FORMAT

    def guest(self, source: str) -> DrillGuest:
        """Give the guest whose source label is ``source``; raises NotFoundError."""
        for guest in self.guests:
            if guest.source == source:
                return guest
        raise NotFoundError(f"drill {self.id} has no guest {source}")

    def image(self, dest: str) -> DrillImage:
        """Give the drill image ``dest``; raises NotFoundError."""
        for guest in self.guests:
            for image in guest.images:
                if image.dest == dest:
                    return image
        raise NotFoundError(f"drill {self.id} has no image {dest}")

    def to_dict(self) -> dict[str, Any]:
        """Give the state as plain data (what drill.json holds)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DrillState:
        """Give the state read from ``data``; raises KeyError/TypeError if malformed."""
        guests = []
        for raw in data.get("guests", []):
            images = [DrillImage(**i) for i in raw.get("images", [])]
            guests.append(DrillGuest(**{**raw, "images": images}))
        return cls(**{**data, "guests": guests})


class DrillStore:
    """``<root>/pve-mirror/drill``: the running drill's state and past reports.

    Thread-safe within a process (steps of a phase run concurrently); across processes
    the cluster lock of the command keeps writers apart.
    """

    def __init__(self, root: Path) -> None:
        self.directory = root / DRILL_DIR
        self.path = self.directory / STATE_FILE
        self._lock = threading.RLock()

    def load(self) -> DrillState | None:
        """Give the recorded drill, or None if none is recorded.

        Raises ConfigError naming the file if it is unreadable or not a drill state.
        """
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return DrillState.from_dict(data)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise fs_error(exc, self.path, "read") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"not a drill state ({exc}); 'pve-mirror drill stop' still finds drill guests "
                "and images, then remove this file",
                str(self.path),
            ) from exc

    def save(self, state: DrillState) -> None:
        """Write the state atomically; raises FileSystemError if pmxcfs refuses."""
        data = json.dumps(state.to_dict(), separators=(",", ":"), sort_keys=True)
        with self._lock:
            write_atomic(self.path, data.encode() + b"\n")

    def update(self, change: Callable[[DrillState], None]) -> DrillState:
        """Apply ``change`` to the recorded state and save it; give the new state.

        Raises NotFoundError if no drill is recorded.
        """
        with self._lock:
            state = self.load()
            if state is None:
                raise NotFoundError(f"no drill recorded in {self.path}")
            change(state)
            self.save(state)
            return state

    def remove(self) -> bool:
        """Remove the state file; give whether there was one."""
        with self._lock:
            try:
                self.path.unlink()
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise fs_error(exc, self.path, "remove") from exc
            return True

    # --- reports --------------------------------------------------------------------

    def report_path(self, drill_id: str) -> Path:
        """Give where the report of drill ``drill_id`` is kept.

        Raises NotFoundError for a string that is not a drill id.
        """
        if not _DRILL_ID.fullmatch(drill_id):
            raise NotFoundError(f"{drill_id!r} is not a drill id (like 20261201-101500)")
        return self.directory / REPORTS_DIR / f"{drill_id}.json"

    def save_report(self, report: dict[str, Any]) -> Path:
        """Write a finished drill's report and prune old ones; give its path."""
        path = self.report_path(str(report["id"]))
        write_atomic(path, (json.dumps(report, indent=1, sort_keys=True) + "\n").encode())
        reports = self.reports()
        for old in reports[: max(0, len(reports) - KEEP_REPORTS)]:
            old.unlink(missing_ok=True)
        return path

    def reports(self) -> list[Path]:
        """Give the kept reports, oldest first (by when they were written)."""
        directory = self.directory / REPORTS_DIR
        if not directory.is_dir():
            return []
        found = []
        for path in directory.glob("*.json"):
            try:
                found.append((path.stat().st_mtime, path.name, path))
            except FileNotFoundError:
                continue  # pruned meanwhile
        return [path for _mtime, _name, path in sorted(found)]

    def load_report(self, drill_id: str | None = None) -> dict[str, Any]:
        """Give the report of ``drill_id`` (default: the newest).

        Raises NotFoundError if there is none, ConfigError if it is unreadable.
        """
        if drill_id is None:
            found = self.reports()
            if not found:
                raise NotFoundError(f"no drill report in {self.directory / REPORTS_DIR}")
            path = found[-1]
        else:
            path = self.report_path(drill_id)
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise NotFoundError(f"no report of drill {drill_id} ({path})") from exc
        except (OSError, ValueError) as exc:
            raise ConfigError(f"unreadable drill report: {exc}", str(path)) from exc
        return data


def new_drill_id(now: float | None = None) -> str:
    """Give a drill id: the UTC start time, ``20261201-101500``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))


def iso(when: float | None) -> str | None:
    """Give ``when`` as ISO 8601 UTC (seconds), or None."""
    if when is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
