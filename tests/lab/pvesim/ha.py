"""A stand-in for the HA stack (pve-ha-manager): the CRM and the LRM in one thread.

What pve-mirror meets, as Proxmox has it:

- A guest is HA-managed when ``ha/resources.cfg`` lists ``vm: <vmid>`` / ``ct: <vmid>``
  with a state other than ``ignored`` (PVE::HA::Config::vm_is_ha_managed).
- An API start of such a guest does not start it: qemu-server's
  PVE::API2::Qemu::vm_start (pve-container's PVE::API2::LXC::Status vm_start alike) forks
  an ``hastart`` task that runs ``ha-manager set vm:<id> --state started`` and ends OK
  at once; the LRM starts the guest a round later. A stop/shutdown forks ``hastop``,
  which queues ``crm-command stop vm:<id> <timeout>`` (0 for stop) in
  ``ha/crm_commands``; the CRM turns it into the request state ``stopped`` in
  resources.cfg and the service state ``request_stop``; the LRM shuts the guest down;
  only then is the service ``stopped`` (PVE::HA::Manager::next_state_started,
  next_state_request_stop).
- The service state is what ``/cluster/resources`` shows as ``hastate`` and
  ``status/current`` as ``ha.state`` (PVE::HA::Config::get_service_status); it says
  ``started`` before the guest runs and ``request_stop`` while it still runs.
- A service in ``started`` whose guest is not running is started by the LRM (that is
  HA's point: a crashed guest comes back); a start that fails twice puts it in
  ``error`` (max_restart/max_relocate 1; relocation to another node is not simulated)
  and HA leaves it alone until its state is set again.

The real CRM and LRM work in rounds of about 10 s; here a round is ``round_s``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.pvesim import config
from tests.lab.pvesim.tasks import Task

log = logging.getLogger("pvesim.ha")

RESOURCES = "ha/resources.cfg"
COMMANDS = "ha/crm_commands"
MANAGER_STATUS = "ha/manager_status"
DEFAULT_ROUND = 2.0
MAX_FAILURES = 2  # max_restart 1 on the node, then max_relocate 1 (here: the same node again)
HA_TYPES = {"qemu": "vm", "lxc": "ct"}
_HEADER_RE = re.compile(r"^(vm|ct):\s*(\d+)\s*$")
_PROP_RE = re.compile(r"^\s+(\S+)(?:\s+(.*\S))?\s*$")

# How the LRM acts on a guest: (node, kind, vmid, timeout) -> the task doing it.
StartFn = Callable[[str, str, int], Task]
StopFn = Callable[[str, str, int, int], Task]
RunningFn = Callable[[int], bool]


@dataclass
class Section:
    """One resources.cfg section: ``vm: 100`` and its properties, in file order."""

    type: str
    vmid: int
    props: list[tuple[str, str]] = field(default_factory=list)

    @property
    def sid(self) -> str:
        """Give the service ID, ``vm:100``."""
        return f"{self.type}:{self.vmid}"

    def get(self, key: str, default: str = "") -> str:
        """Give a property's value."""
        return next((v for k, v in self.props if k == key), default)

    def set(self, key: str, value: str) -> None:
        """Set a property, keeping its place if it exists."""
        for i, (k, _v) in enumerate(self.props):
            if k == key:
                self.props[i] = (key, value)
                return
        self.props.append((key, value))


def parse_resources(text: str) -> list[Section]:
    """Give the sections of a resources.cfg text (PVE::HA::Resources, a SectionConfig)."""
    out: list[Section] = []
    current: Section | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            current = None if not line.strip() else current
            continue
        header = _HEADER_RE.match(line)
        if header:
            current = Section(header.group(1), int(header.group(2)))
            out.append(current)
            continue
        prop = _PROP_RE.match(line)
        if prop and current is not None:
            current.props.append((prop.group(1), prop.group(2) or ""))
    return out


def render_resources(sections: list[Section]) -> str:
    """Give resources.cfg text for ``sections``."""
    blocks = []
    for s in sections:
        blocks.append(f"{s.type}: {s.vmid}\n" + "".join(f"\t{k} {v}\n" for k, v in s.props))
    return "\n".join(blocks)


@dataclass
class Service:
    """The CRM's view of one service (an entry of manager_status' service_status)."""

    sid: str
    state: str
    node: str
    cmd: tuple[str, int] | None = None
    task: Task | None = None
    doing: str = ""  # what the LRM's task does: "start" or "stop"
    failures: int = 0
    timeout: int = 0


class HaStack:
    """The CRM and LRM of one simulated cluster; see the module docstring."""

    def __init__(
        self,
        root: Path,
        *,
        start: StartFn,
        stop: StopFn,
        running: RunningFn,
        round_s: float = DEFAULT_ROUND,
    ) -> None:
        self.root = root
        self.round_s = round_s
        self._start = start
        self._stop = stop
        self._running = running
        self._lock = threading.Lock()
        self._services: dict[str, Service] = {}
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the files ---------------------------------------------------------------------

    def sections(self) -> dict[str, Section]:
        """Give resources.cfg by service ID (empty if there is none)."""
        try:
            text = (self.root / RESOURCES).read_text()
        except FileNotFoundError:
            return {}
        return {s.sid: s for s in parse_resources(text)}

    def managed(self, kind: str, vmid: int) -> bool:
        """Tell whether the guest is HA-managed (vm_is_ha_managed: listed, not ``ignored``)."""
        section = self.sections().get(f"{HA_TYPES[kind]}:{vmid}")
        return section is not None and section.get("state", "started") != "ignored"

    def service_state(self, kind: str, vmid: int) -> str | None:
        """Give the CRM's state of the guest's service (None before the CRM saw it)."""
        with self._lock:
            service = self._services.get(f"{HA_TYPES[kind]}:{vmid}")
            return service.state if service else None

    def hastate(self, kind: str, vmid: int) -> str | None:
        """Give ``hastate`` as /cluster/resources does: the service state, else the
        requested state of resources.cfg, else None (not managed)."""
        state = self.service_state(kind, vmid)
        if state is not None:
            return state
        section = self.sections().get(f"{HA_TYPES[kind]}:{vmid}")
        return section.get("state", "started") if section else None

    def set_state(self, kind: str, vmid: int, state: str) -> None:
        """Do ``ha-manager set <sid> --state <state>``: write the request to resources.cfg.

        Raises KeyError if the guest is not HA-managed.
        """
        sid = f"{HA_TYPES[kind]}:{vmid}"
        with self._lock:
            sections = list(self.sections().values())
            match = [s for s in sections if s.sid == sid]
            if not match:
                raise KeyError(sid)
            match[0].set("state", state)
            self._write(RESOURCES, render_resources(sections))
            service = self._services.get(sid)
            if service is not None and service.state == "error" and state != "started":
                service.state, service.failures = "stopped", 0  # leaving error needs a set

    def queue_command(self, command: str) -> None:
        """Append a CRM command (``stop vm:100 60``) to ha/crm_commands
        (PVE::HA::Config::queue_crm_commands)."""
        with self._lock:
            path = self.root / COMMANDS
            old = path.read_text() if path.exists() else ""
            self._write(COMMANDS, old + command + "\n")

    def _write(self, rel: str, text: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.rename(path)

    # ---- the rounds ----------------------------------------------------------------------

    def start(self) -> None:
        """Run the rounds in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="ha-manager", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the rounds."""
        self._halt.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._halt.wait(self.round_s):
            try:
                self.round()
            except Exception:
                log.exception("HA round failed")

    def round(self) -> None:
        """One CRM round, then one LRM round."""
        guests = {(g.kind, g.vmid): g for g in config.list_guests(self.root)}
        sections = self.sections()
        # An ignored resource is no service of the CRM: never added, removed when set
        # (PVE::HA::Manager::manage, "removing stale service ... ignored state requested").
        managed = {sid: sec for sid, sec in sections.items() if sec.get("state") != "ignored"}
        commands = self._take_commands()
        changed = False
        with self._lock:
            for sid in list(self._services):
                if sid not in managed:
                    del self._services[sid]
                    changed = True
            for sid, section in managed.items():
                kind = "qemu" if section.type == "vm" else "lxc"
                guest = guests.get((kind, section.vmid))
                service = self._services.get(sid)
                if service is None:
                    running = self._running(section.vmid)
                    node = guest.node if guest else ""
                    service = Service(sid, "started" if running else "stopped", node)
                    self._services[sid] = service
                    changed = True
                if guest is not None:
                    service.node = guest.node
                for cmd in commands.get(sid, []):
                    service.cmd = cmd
                before = service.state
                self._crm(service, section, sections)
                if guest is not None:
                    self._lrm(service, kind, section.vmid)
                changed = changed or service.state != before
        if changed or commands:
            self._write_status()

    def _take_commands(self) -> dict[str, list[tuple[str, int]]]:
        """Read and empty ha/crm_commands (PVE::HA::Config::read_crm_commands)."""
        with self._lock:
            path = self.root / COMMANDS
            text = path.read_text() if path.exists() else ""
            if text:
                self._write(COMMANDS, "")
        out: dict[str, list[tuple[str, int]]] = {}
        for line in text.splitlines():
            m = re.match(r"^stop\s+(\S+)\s+(\d+)$", line.strip())
            if m:
                out.setdefault(m.group(1), []).append(("stop", int(m.group(2))))
            elif line.strip():
                log.warning("crm command error - unknown command: %s", line)
        return out

    def _crm(self, service: Service, section: Section, sections: dict[str, Section]) -> None:
        """The CRM's state change for one service (PVE::HA::Manager::next_state_*)."""
        wanted = section.get("state", "started")
        if service.state == "stopped":
            service.cmd = None  # "ignore service '...' stop request - service already stopped"
            if wanted == "started":
                service.state, service.failures = "started", 0  # via request_start
        elif service.state == "started":
            if service.cmd is not None and service.cmd[0] == "stop":
                service.timeout = service.cmd[1]
                service.cmd = None
                service.state = "request_stop"
                section.set("state", "stopped")
                self._write(RESOURCES, render_resources(list(sections.values())))
            elif wanted in ("stopped", "disabled"):
                service.state, service.timeout = "request_stop", 60
        elif service.state == "error" and wanted == "disabled":
            service.state = "stopped"

    def _lrm(self, service: Service, kind: str, vmid: int) -> None:
        """The LRM's work for one service: start, stop, or collect a finished task."""
        task = service.task
        if task is not None:
            if not task.done.is_set():
                return
            service.task = None
            failed = task.exitstatus not in ("OK",) and not str(task.exitstatus).startswith(
                "WARNINGS: "
            )
            if service.doing == "stop" and service.state == "request_stop":
                service.state = "error" if failed else "stopped"
            elif service.doing == "start" and service.state == "started" and failed:
                service.failures += 1
                log.warning("starting service %s failed: %s", service.sid, task.exitstatus)
                if service.failures >= MAX_FAILURES:
                    service.state = "error"
        if service.state == "started" and not self._running(vmid):
            service.task, service.doing = self._start(service.node, kind, vmid), "start"
        elif service.state == "request_stop":
            if self._running(vmid):
                service.task = self._stop(service.node, kind, vmid, service.timeout)
                service.doing = "stop"
            else:
                service.state = "stopped"

    def _write_status(self) -> None:
        """Write ha/manager_status as the CRM does (service_status only)."""
        status = {
            "service_status": {
                s.sid: {"state": s.state, "node": s.node} for s in self._services.values()
            }
        }
        try:
            self._write(MANAGER_STATUS, json.dumps(status, sort_keys=True))
        except OSError as exc:  # a read-only /etc/pve must not stop the HA rounds
            log.warning("cannot write %s: %s", MANAGER_STATUS, exc)


# ---- the API (pve-ha-manager's PVE::API2::HA::Resources) -----------------------------------

HA_KEYS = ("state", "group", "max_restart", "max_relocate", "comment")
_SID_RE = re.compile(r"(vm|ct):(\d+)")


def api_index(stack: HaStack) -> list[dict[str, object]]:
    """GET /cluster/ha/resources (``index``): every resource with its properties
    (Sys.Audit on / in PVE: checked by the caller)."""
    out: list[dict[str, object]] = []
    for section in stack.sections().values():
        entry: dict[str, object] = {"sid": section.sid, "type": section.type}
        entry.update(dict(section.props))
        out.append(entry)
    return out


def api_write(
    stack: HaStack,
    sid: str,
    params: dict[str, str],
    *,
    create: bool,
    guest_exists: Callable[[int], bool],
) -> None:
    """POST /cluster/ha/resources (``create``) or PUT /cluster/ha/resources/{sid}
    (``update``), as pve-ha-manager's PVE::API2::HA::Resources: create refuses a guest
    the cluster does not have (PVE::HA::Resources::PVEVM ``exists``) and a defined sid;
    update refuses an undefined sid and a group groups.cfg lacks; both refuse a group
    once groups have been migrated to rules (no group left: have_groups_been_migrated).
    Raises ValueError with PVE's message."""
    m = _SID_RE.fullmatch(sid)
    if m is None:
        raise ValueError(f"unable to parse service id '{sid}'")
    unknown = sorted(set(params) - set(HA_KEYS) - {"sid"})
    if unknown:
        raise ValueError(f"property is not defined in schema: {unknown[0]}")
    group, groups = params.get("group"), _groups(stack.root)
    if group is not None and not groups:
        raise ValueError("invalid parameter 'group': ha groups have been migrated to rules")
    if group is not None and not create and group not in groups:
        raise ValueError(f"HA group '{group}' does not exist")
    with stack._lock:
        sections = list(stack.sections().values())
        match = [s for s in sections if s.sid == sid]
        if create and match:
            raise ValueError(f"resource ID '{sid}' already defined")
        if not create and not match:
            raise ValueError(f"no such resource '{sid}'")
        if create:
            if not guest_exists(int(m.group(2))):
                raise ValueError(f"resource '{sid}' does not exist in cluster")
            match = [Section(m.group(1), int(m.group(2)))]
            sections.append(match[0])
        for key in HA_KEYS:
            if key in params:
                match[0].set(key, params[key])
        stack._write(RESOURCES, render_resources(sections))


def _groups(root: Path) -> set[str]:
    try:
        text = (root / "ha" / "groups.cfg").read_text()
    except FileNotFoundError:
        return set()
    return {
        line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("group:")
    }
