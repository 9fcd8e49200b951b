"""GET, PUT and POST /nodes/{node}/{qemu,lxc}/{vmid}/config.

As qemu-server's PVE::API2::Qemu (vm_config, update_vm, update_vm_async through
$update_vm_api) and pve-container's PVE::API2::LXC::Config update_vm have it:

- reading needs VM.Audit on /vms/{vmid};
- a ``hookscript`` is checked on the guest's node first (PVE::GuestHelpers::
  check_hookscript: the snippet must exist there and be executable; else 400 with
  ``hookscript`` in the errors);
- only root@pam may set a hookscript: a VM answers 500 "only root can set 'hookscript'
  config" ($check_vm_modify_config_perm), a CT 403 "changing the hookscript is only
  allowed for root@pam" (PVE::LXC::check_ct_modify_config_perm); an API token is never
  root@pam, whatever its user. The other keys need VM.Config.* (simulated: the
  options pve-mirror could touch);
- a config with a ``lock:`` refuses changes ("VM is locked (backup)") unless skiplock
  (root@pam only); a ``digest`` that does not match refuses them too;
- PUT answers null once written; a VM's POST answers the UPID of a ``qmconfig`` task.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from tests.lab.pvesim import config
from tests.lab.pvesim.config import ConfigError, GuestConfig
from tests.lab.pvesim.errors import ApiError, param_error
from tests.lab.pvesim.power import ROOT, guest_word
from tests.lab.pvesim.tasks import TaskError, TaskLog

if TYPE_CHECKING:
    from tests.lab.pvesim.api import Request, Simulator

_SECTION_RE = re.compile(r"^\[[^\]]+\]\s*$")
_KEY_RE = re.compile(r"^[a-z][a-z_\-]*\d*$")
# Keys whose change needs a privilege short of root, by the privilege.
_KEY_PRIVS = {
    "VM.Config.Options": {"name", "hostname", "description", "onboot", "ostype", "protection",
                          "startup", "tags", "agent", "boot"},
    "VM.Config.Memory": {"memory", "balloon", "swap", "shares"},
    "VM.Config.CPU": {"cores", "sockets", "cpu", "cpulimit", "cpuunits", "numa", "vcpus"},
    "VM.Config.HWType": {"scsihw", "bios", "machine", "vga", "keyboard"},
    "VM.Config.Network": {f"net{i}" for i in range(32)},
}  # fmt: skip
_ROOT_ONLY = {"hookscript", "lock", "args", "lxc"}


def digest(text: str) -> str:
    """Give PVE's config digest: SHA-1 of the file's bytes."""
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()


def read_config(sim: Simulator, req: Request, m: re.Match[str]) -> Any:
    """GET .../config: the current section's values, description and digest."""
    node, kind, vmid = sim.node_name(m["node"]), m["kind"], sim.vmid(m["vmid"])
    sim.access.check(req.user, f"/vms/{vmid}", ["VM.Audit"])
    g = sim.load(node, kind, vmid)
    out: dict[str, Any] = dict(g.values)
    if g.description:
        out["description"] = g.description
    out["digest"] = digest(g.path.read_text()) if g.path.exists() else ""
    return out


def update_config(sim: Simulator, req: Request, m: re.Match[str]) -> Any:
    """PUT/POST .../config: check, then write the changed keys (see the module docstring)."""
    node, kind, vmid = sim.node_name(m["node"]), m["kind"], sim.vmid(m["vmid"])
    params = dict(req.params)
    want_digest = params.pop("digest", "")
    skiplock = params.pop("skiplock", "0") == "1"
    if skiplock and req.user != ROOT:
        raise param_error("skiplock", "Only root may use this option.")
    delete = [k for k in re.split(r"[,;\s]+", params.pop("delete", "")) if k]
    for key in list(params) + delete:
        if not _KEY_RE.match(key):
            raise param_error(key, "property is not defined in schema and the schema does not "
                                   "allow additional properties")  # fmt: skip
    if not params and not delete:
        raise ApiError(500, "no options specified")
    sim.access.check(req.user, f"/vms/{vmid}", ["VM.Audit"])  # the method's own check is "any"
    conf = sim.load(node, kind, vmid)
    if "hookscript" in params:
        _check_hookscript(sim, conf, params["hookscript"])
    for key in list(params) + delete:
        _check_key(sim, req.user, kind, vmid, key)

    def write() -> None:
        release = sim.locked(kind, vmid)
        try:
            current = sim.load_for_task(node, kind, vmid)
            text = current.path.read_text()
            if want_digest and want_digest != digest(text):
                raise TaskError("checksum mismatch (file change by other user?)")
            if current.lock and not skiplock:
                raise TaskError(f"{guest_word(kind)} is locked ({current.lock})")
            new = _rewrite(text, params, delete)
            tmp = current.path.with_name(f".{current.path.name}.tmp")
            tmp.write_text(new)
            tmp.rename(current.path)
        finally:
            release()

    if req.method == "POST" and kind == "qemu":

        def worker(task_log: TaskLog) -> None:
            task_log(
                "update VM " + str(vmid) + ": " + " ".join(f"-{k} {v}" for k, v in params.items())
            )
            write()

        return str(sim.tasks.start(node, "qmconfig", str(vmid), req.user, worker).upid)
    try:
        write()
    except TaskError as exc:
        raise ApiError(500, str(exc)) from None
    return None


def _check_hookscript(sim: Simulator, conf: GuestConfig, volume: str) -> None:
    """PVE::GuestHelpers::check_hookscript on the guest's node; 400 if it fails."""
    try:
        script = config.hookscript_path(sim.root, volume, sim.node_roots.get(conf.node))
    except ConfigError as exc:
        raise param_error("hookscript", str(exc)) from None
    import os

    if not script.is_file():
        raise param_error("hookscript", f"script '{volume}' does not exist")
    if not os.access(script, os.X_OK):
        raise param_error("hookscript", f"script '{volume}' is not executable")


def _check_key(sim: Simulator, user: str, kind: str, vmid: int, key: str) -> None:
    if user == ROOT:
        return
    if key in _ROOT_ONLY or key.startswith("lxc."):
        if kind == "lxc" and key == "hookscript":
            raise ApiError(403, "Permission check failed (changing the hookscript is only "
                                "allowed for root@pam)")  # fmt: skip
        raise ApiError(500, f"only root can set '{key}' config")
    for priv, keys in _KEY_PRIVS.items():
        if key in keys:
            sim.access.check(user, f"/vms/{vmid}", [priv])
            return
    sim.access.check(user, f"/vms/{vmid}", ["VM.Config.Disk"])  # disks and the rest


def _rewrite(text: str, values: dict[str, str], delete: list[str]) -> str:
    """Give the config text with ``values`` set and ``delete`` removed in its main section."""
    lines = text.splitlines()
    end = next((i for i, ln in enumerate(lines) if _SECTION_RE.match(ln)), len(lines))
    main, rest = lines[:end], lines[end:]
    pending = dict(values)
    out = []
    for line in main:
        key = line.split(":", 1)[0].strip() if ":" in line and not line.startswith("#") else ""
        if key in delete:
            continue
        if key in pending:
            out.append(f"{key}: {pending.pop(key)}")
            continue
        out.append(line)
    while out and not out[-1].strip():
        out.pop()
    out += [f"{k}: {v}" for k, v in pending.items()]
    if rest:
        out += ["", *rest]
    return "\n".join(out) + "\n"
