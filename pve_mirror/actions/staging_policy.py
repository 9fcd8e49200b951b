"""What a guest config staged by the other site may carry: the content policy.

A staged config came from another machine; installing it here lets it run code on
this host or reach this host's files and devices if it carries the keys below. Each
rule has a name (what ``staging-allow`` in the ``site:`` section of pve-mirror.cfg
lists to allow it), the keys it covers, what happens by default and why:

================  ==================================  ========  =============================
rule              keys (value)                        default   reason
================  ==================================  ========  =============================
``lxc``           raw ``lxc.*`` keys (CT)             refuse    hooks run commands on this
                                                                host; mounts, AppArmor and
                                                                cgroup device rules reach it
``args``          ``args`` (VM)                       refuse    raw QEMU arguments run
                                                                programs here (script=, ...)
``hostpci``       ``hostpciN`` (VM)                   refuse    passes this host's PCI
                                                                devices to the guest
``usb``           ``usbN`` with ``host=`` (VM)        refuse    passes this host's USB devices
``serial``        ``serialN``/``parallelN`` /dev/...  refuse    passes this host's character
                                                                devices
``dev``           ``devN`` (CT)                       refuse    passes this host's devices
``host-mount``    a disk or mount point whose         refuse    bind mount or raw device:
                  volume is a path (``/srv``,                   reaches this host's files
                  ``/dev/sdb``)
``privileged``    a CT without ``unprivileged: 1``    refuse    container root is this host's
                                                                root
``hookscript``    ``hookscript`` other than           strip     a foreign script would run on
                  ``<storage>:snippets/pve-mirror-hook``        this host at every start; the
                                                                guest runs without it
``lock``          ``lock``                            (install) see actions/preflight.py:
                                                                ``lock: backup`` is dropped,
                                                                any other lock refused
================  ==================================  ========  =============================

Every section is checked (current, pending, snapshots: a rollback or a pending change
would bring the key back). A refused key makes the guest invalid (one problem line
naming ``file:line``); a stripped key is removed from the config that is installed
(one line saying so). An allowed rule lets the key through unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pve_mirror.errors import ConfigError, PveMirrorError
from pve_mirror.pve.guestconfig import GuestConfig, GuestKind, is_disk_key

REFUSE = "refuse"
STRIP = "strip"

# rule name -> (default action, reason); the table of the module docstring.
RULES: dict[str, tuple[str, str]] = {
    "lxc": (REFUSE, "raw LXC keys can run commands on this host and reach its files"),
    "args": (REFUSE, "raw QEMU arguments can run programs on this host"),
    "hostpci": (REFUSE, "passes this host's PCI devices to the guest"),
    "usb": (REFUSE, "passes this host's USB devices to the guest"),
    "serial": (REFUSE, "passes this host's character devices to the guest"),
    "dev": (REFUSE, "passes this host's devices to the container"),
    "host-mount": (REFUSE, "bind mount or raw device: reaches this host's files"),
    "privileged": (REFUSE, "a privileged container's root is this host's root"),
    "hookscript": (STRIP, "a foreign hookscript would run on this host at every start"),
}

OWN_HOOK = re.compile(r"[a-zA-Z][a-zA-Z0-9\-_.]*:snippets/pve-mirror-hook", re.ASCII)
_HOSTPCI = re.compile(r"hostpci\d+", re.ASCII)
_USB = re.compile(r"usb\d+", re.ASCII)
_SERIAL = re.compile(r"(serial|parallel)\d+", re.ASCII)
_DEV = re.compile(r"dev\d+", re.ASCII)
_ALLOW_WORD = re.compile(r"[\s,;]+")


@dataclass
class PolicyResult:
    """What the policy found in one config: refused and stripped keys, one line each."""

    refused: list[str] = field(default_factory=list)
    stripped: list[str] = field(default_factory=list)


def parse_allow(text: str | None) -> frozenset[str]:
    """Give the rule names of a ``staging-allow`` value (comma or space separated).

    Raises PveMirrorError (a ConfigError) naming an unknown rule.
    """
    words = frozenset(w for w in _ALLOW_WORD.split(text or "") if w)
    unknown = sorted(words - RULES.keys())
    if unknown:
        raise ConfigError(
            f"staging-allow: unknown rule(s) {', '.join(unknown)} (known: {', '.join(RULES)})"
        )
    return words


def site_allow(root: Path) -> frozenset[str]:
    """Give the rules ``staging-allow`` of ``<root>/pve-mirror.cfg`` allows.

    No site config (or one that cannot be read) allows nothing: the strict default.
    Raises ConfigError for an unknown rule name.
    """
    from pve_mirror.pve.siteconfig import load_site_config

    try:
        value = load_site_config(root).staging_allow
    except (PveMirrorError, OSError):
        return frozenset()
    return parse_allow(value)


def rule_of(kind: GuestKind, key: str, value: str) -> str | None:
    """Give the name of the rule ``key: value`` falls under, or None if it is harmless."""
    if key.startswith("lxc."):
        return "lxc"
    if kind == "qemu":
        if key == "args":
            return "args"
        if _HOSTPCI.fullmatch(key):
            return "hostpci"
        if _USB.fullmatch(key) and "host=" in value:
            return "usb"
        if _SERIAL.fullmatch(key) and value.startswith("/"):
            return "serial"
    elif _DEV.fullmatch(key):
        return "dev"
    if key == "hookscript" and not OWN_HOOK.fullmatch(value):
        return "hookscript"
    if is_disk_key(kind, key) and _volume(value).startswith("/"):
        return "host-mount"
    return None


def _volume(value: str) -> str:
    first = value.split(",", 1)[0]
    for prefix in ("volume=", "file="):
        if first.startswith(prefix):
            return first[len(prefix) :]
    return first


def apply_policy(config: GuestConfig, allow: frozenset[str] = frozenset()) -> PolicyResult:
    """Check ``config`` against the policy; strip what the policy strips (in memory).

    Gives the refused and stripped keys, one line each naming ``file:line``; rules in
    ``allow`` are let through. Never raises.
    """
    result = PolicyResult()
    for section in config.sections:
        if section.kind == "unknown":
            continue
        where = "" if section.kind == "main" else f" [{section.name}]"
        strip: list[str] = []
        for line in section.lines:
            if line.key is None or line.value is None:
                continue
            rule = rule_of(config.kind, line.key, line.value)
            if rule is None or rule in allow:
                continue
            action, reason = RULES[rule]
            text = f"{config.path}:{line.number}: {line.key}{where} ({reason})"
            if action == STRIP:
                result.stripped.append(f"{text}: stripped (allow with staging-allow: {rule})")
                strip.append(line.key)
            else:
                result.refused.append(f"{text}: refused (allow with staging-allow: {rule})")
        for key in strip:
            section.lines = [ln for ln in section.lines if ln.key != key]
            section.values.pop(key, None)
    unprivileged = config.main.get("unprivileged") in ("1", "yes", "on", "true")
    if config.kind == "lxc" and "privileged" not in allow and not unprivileged:
        result.refused.append(
            f"{config.path}: privileged container (no 'unprivileged: 1') "
            f"({RULES['privileged'][1]}): refused (allow with staging-allow: privileged)"
        )
    return result
