"""The failover steps that bring a guest's firewall rules and HA resource along.

Order, from pve-ha-manager (PVE::API2::HA::Resources ``create``; PVE::HA::Manager
``next_state_stopped``/``next_state_started``): a resource can only be added for a
guest whose config exists, and the CRM acts on the requested state at its next round
(about 10 s): ``started`` starts a stopped guest, ``stopped``/``disabled`` stops a
running one, ``ignored`` leaves it alone. So the resource is registered after the
config is installed *and after the start steps*: the guests come up in their boot
order through pve-mirror's own start (which waits until each runs), then HA takes
each over in the state the source had (a running guest in ``started`` is left
running). Registered earlier, HA would start every guest at once, out of boot order.

At the old site (planned failover only) the resource is set to ``ignored`` right
after the guest stopped there: HA no longer starts, stops or relocates it (PVE's
vm_is_ha_managed is false for ``ignored``), so it does not fight the demoted images
or a later failback, and the admin still sees the resource and its settings.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pve_mirror.actions.context import SiteContext
from pve_mirror.actions.failover_select import GuestMove
from pve_mirror.actions.guest_extras import FIREWALL_DIR, HA_TYPES, MAX_FIREWALL_BYTES
from pve_mirror.actions.staging import StagedSet, read_nofollow
from pve_mirror.actions.staging_install import CONFIG_MODE, existing_configs, render_for_install
from pve_mirror.engine.plan import Plan, Step, step
from pve_mirror.errors import PolicyError
from pve_mirror.files import write_atomic
from pve_mirror.pve.api import PveApi

P_HA_SOURCE, P_FIREWALL, P_HA = 11, 71, 1000  # after stop-source, install-config, start
_GROUP = re.compile(r"group:\s*(\S+)\s*")


def add_steps(
    plan: Plan, move: GuestMove, staged_set: StagedSet, source: str, forced: bool
) -> None:
    """Add the firewall and HA steps of ``move`` to ``plan`` (from the staged data, which
    the failover does not change, so a rerun plans the same steps)."""
    staged = staged_set.guest(move.staged.vmid)
    g, kind, vmid = move.label, staged.kind, str(staged.vmid)
    rules = "" if staged.firewall is None else hashlib.sha256(staged.firewall).hexdigest()
    plan.add(step("install-firewall", P_FIREWALL, g, g,
                  f"install firewall/{vmid}.fw" if rules else
                  f"no firewall rules at {source}: set an old firewall/{vmid}.fw here aside",
                  vmid=vmid, sha256=rules))  # fmt: skip
    if staged.ha is None:
        return
    ha = staged.ha.to_dict()
    if not forced:
        plan.add(step("ha-ignore-source", P_HA_SOURCE, g, g,
                      f"set the HA resource of {g} on {source} to ignored",
                      guest_type=kind, vmid=vmid))  # fmt: skip
    shown = ", ".join(f"{k} {v}" for k, v in ha.items())
    # prefixed: ``group`` is also step()'s own argument
    params: dict[str, Any] = {f"ha_{k}": str(v) for k, v in ha.items()}
    plan.add(step("ha-register", P_HA, g, g, f"register {g} with HA here ({shown})",
                  guest_type=kind, vmid=vmid, **params))  # fmt: skip


class GuestExtrasSteps:
    """The functions of the steps :func:`add_steps` plans."""

    def __init__(
        self, ctx: SiteContext, moves: dict[str, GuestMove], staged: Callable[[], StagedSet]
    ) -> None:
        self.ctx = ctx
        self.moves = moves
        self._staged = staged

    def table(self) -> dict[str, Callable[[Step], str]]:
        """Give kind -> function."""
        return {
            "install-firewall": self.install_firewall,
            "ha-ignore-source": self.ha_ignore_source,
            "ha-register": self.ha_register,
        }

    def install_firewall(self, item: Step) -> str:
        """Write the staged firewall file as ``<root>/firewall/<vmid>.fw`` (atomic, 0640).

        A different file already there is this guest's leftover (VMIDs are unique in a
        cluster and install-config just made this guest the one of that VMID here); it
        is moved to ``pve-mirror/stale/`` first. Raises PolicyError if the guest here
        is not the staged one or the staged rules changed since the plan.
        """
        move = self.moves[item.group]
        vmid = int(item.param("vmid"))
        staged_set = self._staged()
        staged = staged_set.guest(vmid)
        want = item.param("sha256")
        data = staged.firewall
        if (hashlib.sha256(data).hexdigest() if data is not None else "") != want:
            raise PolicyError(f"{move.label}: its staged firewall rules changed since the plan")
        root = self.ctx.root.path
        config = render_for_install(staged, staged_set.storage_map)
        installed = existing_configs(root, vmid)
        if len(installed) != 1 or _read(installed[0]) != config:
            raise PolicyError(f"{move.label}: not installed here, its firewall file is left alone")
        target = root / FIREWALL_DIR / f"{vmid}.fw"
        old = _read(target) if target.exists() or target.is_symlink() else None
        if old is not None and old == data:
            return f"{target} already installed"
        aside = ""
        if target.exists() or target.is_symlink():
            stale = root / "pve-mirror" / "stale"
            stale.mkdir(parents=True, exist_ok=True)
            moved = stale / f"firewall-{vmid}.fw.{int(time.time())}"
            os.replace(target, moved)
            aside = f" (the old one moved to {moved})"
        if data is None:
            return f"no firewall rules{aside}"
        write_atomic(target, data, CONFIG_MODE)
        return f"installed {target}{aside}"

    def ha_ignore_source(self, item: Step) -> str:
        """Set the guest's HA resource on the old site to ``ignored`` (nothing if it has none)."""
        api = self.ctx.peer_api()
        sid = _sid(item)
        current = _resource(api, sid)
        if current is None:
            return f"{sid} is not an HA resource there"
        if current.get("state") == "ignored":
            return f"{sid} already ignored"
        api.put(f"/cluster/ha/resources/{sid}", state="ignored")
        return f"{sid} set to ignored (was {current.get('state', 'started')})"

    def ha_register(self, item: Step) -> str:
        """Add the guest's HA resource here with the source's settings, or update it to
        them if it exists (a rerun, or the resource a failback left ignored). A group
        this site lacks is left out (HA groups name nodes); the detail says so."""
        api = self.ctx.local_api()
        sid = _sid(item)
        params: dict[str, Any] = {k[3:]: v for k, v in item.params if k.startswith("ha_")}
        note = ""
        group = params.get("group")
        if group is not None and group not in self._local_groups():
            del params["group"]
            note = f"; group {group} does not exist here, left out"
        if _resource(api, sid) is None:
            api.post("/cluster/ha/resources", sid=sid, **params)
            return f"{sid} added ({params.get('state', 'started')}){note}"
        api.put(f"/cluster/ha/resources/{sid}", **params)
        return f"{sid} updated ({params.get('state', 'started')}){note}"

    def _local_groups(self) -> set[str]:
        try:
            text = (self.ctx.root.path / "ha" / "groups.cfg").read_text(errors="replace")
        except OSError:
            return set()
        return {m.group(1) for line in text.splitlines() for m in [_GROUP.fullmatch(line)] if m}


def _sid(item: Step) -> str:
    return f"{HA_TYPES[item.param('guest_type')]}:{int(item.param('vmid'))}"


def _resource(api: PveApi, sid: str) -> dict[str, Any] | None:
    """Give the HA resource ``sid`` as GET /cluster/ha/resources lists it, or None."""
    for entry in api.get("/cluster/ha/resources") or []:
        if isinstance(entry, dict) and entry.get("sid") == sid:
            return entry
    return None


def _read(path: Path) -> bytes | None:
    """Give the file's bytes (no symlink followed), None if it cannot be read."""
    try:
        return read_nofollow(path, MAX_FIREWALL_BYTES)
    except OSError:
        return None
