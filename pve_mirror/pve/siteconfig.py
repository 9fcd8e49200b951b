"""``<root>/pve-mirror.cfg``: this site, its peer, the storage map and the mirrored guests.

The file is in SectionConfig format like ``storage.cfg`` so that it lives in
``/etc/pve`` and is the same on every node of the cluster::

    site: site-a
        peer site-b

    peer: site-b
        api-url https://192.0.2.10:8006
        api-token root@pam!pve-mirror
        ceph-user admin
        ssh root@192.0.2.10
        node pve-b1

    storagemap: ceph-rbd
        target ceph-rbd

    nodemap: pve-a1
        target pve-b1

    guest: vm:100
        mode snapshot
        schedule 5m
        order 1

Secrets are never in this file: the peer's Ceph conf and keyring, its API token secret
and CA are files under ``<root>/priv/pve-mirror/`` named after the peer. Comments,
unknown keys and skipped sections survive a rewrite.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pve_mirror.ceph.access import ClusterAccess
from pve_mirror.errors import ConfigError, NotFoundError
from pve_mirror.policy import DEFAULT_MODE, MirrorMode, parse_mode
from pve_mirror.pve.root import GuestType
from pve_mirror.pve.sectionconfig import (
    Prop,
    Section,
    SectionConfigFile,
    SectionFormat,
    boolean,
    integer,
    parse_section_config,
    string,
    valid_section_id,
)
from pve_mirror.pve.storage import decode_config

if TYPE_CHECKING:
    # The API client and the file writer load late: the guest hook reads this file on
    # every guest start and needs neither.
    from pve_mirror.pve.api import HttpsEndpoint

SITE_CFG = "pve-mirror.cfg"
PRIV_DIR = Path("priv") / "pve-mirror"
_GUEST_ID = re.compile(r"(vm|ct):([1-9]\d{2,8})", re.ASCII)
_KIND_BY_PREFIX: dict[str, GuestType] = {"vm": "qemu", "ct": "lxc"}
_PREFIX_BY_KIND = {kind: prefix for prefix, kind in _KIND_BY_PREFIX.items()}
_INTERVAL = r"[1-9]\d*[mhd]"

_SITE_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"
FORMAT = SectionFormat(
    types={
        "site": {
            "peer": Prop(string(_SITE_NAME, "site name")),
            # This site's own API: pvesh on the node (default) or https with a token.
            "api-url": Prop(string(r"https://\S+", "API URL")),
            "api-token": Prop(string(r"[^\s!]+@[^\s!]+![A-Za-z][A-Za-z0-9.\-_]*", "API token id")),
            "api-verify": Prop(boolean),
            "node": Prop(string(r"[A-Za-z0-9][A-Za-z0-9\-]*", "node name")),
            "comment": Prop(string()),
            "concurrency": Prop(integer(1)),
            # DR drills (actions/drill_site.py): drill guests' VMIDs and isolated bridge.
            "drill-vmids": Prop(string(r"[1-9]\d{2,8}-[1-9]\d{2,8}", "VMID range")),
            "drill-bridge": Prop(string(r"[A-Za-z][A-Za-z0-9_.\-]*", "bridge name")),
            # Staged-config content rules let through (actions/staging_policy.py).
            "staging-allow": Prop(string(r"[a-z\-, ]+", "rule names")),
        },
        "peer": {
            "api-url": Prop(string(r"https://\S+", "API URL")),
            "api-token": Prop(string(r"[^\s!]+@[^\s!]+![A-Za-z][A-Za-z0-9.\-_]*", "API token id")),
            "api-verify": Prop(boolean),
            "ceph-user": Prop(string(r"[A-Za-z0-9_.\-]+", "Ceph user")),
            "ssh": Prop(
                string(
                    r"[A-Za-z0-9_.\-]+@[A-Za-z0-9_.:\-\[\]]+|[A-Za-z0-9_.:\-\[\]]+", "SSH target"
                )
            ),
            "ssh-port": Prop(integer(1)),
            "node": Prop(string(r"[A-Za-z0-9][A-Za-z0-9\-]*", "node name")),
            # The peer's config root: /etc/pve on a real node; elsewhere in the lab.
            "root": Prop(string(r"/[^\s]*", "absolute path")),
            "comment": Prop(string()),
        },
        "storagemap": {
            "target": Prop(string(r"[a-z][a-z0-9\-_.]*[a-z0-9]", "storage ID")),
            "comment": Prop(string()),
        },
        # nodemap: <node here>  target <the peer's node>: a guest that comes from that
        # peer node lands on this one (and the other way round at the peer).
        "nodemap": {
            "target": Prop(string(r"[A-Za-z0-9][A-Za-z0-9\-]*", "node name")),
            "comment": Prop(string()),
        },
        "guest": {
            "mode": Prop(string(r"snapshot|journal", "mirror mode")),
            "schedule": Prop(string(_INTERVAL, "schedule interval")),
            "order": Prop(integer(0)),
            "group": Prop(string(r"[A-Za-z0-9_.\-]+", "priority group")),
            "enabled": Prop(boolean),
            "comment": Prop(string()),
        },
    },
    check_id=lambda section_id: (
        None
        if _GUEST_ID.fullmatch(section_id) or re.fullmatch(_SITE_NAME, section_id, re.ASCII)
        else valid_section_id(section_id)
    ),
)


def guest_id(kind: GuestType, vmid: int) -> str:
    """Give the section ID of a guest: ``vm:100`` or ``ct:200``."""
    return f"{_PREFIX_BY_KIND[kind]}:{vmid}"


def parse_guest_id(text: str) -> tuple[GuestType, int]:
    """Give (kind, VMID) of ``vm:100`` / ``ct:200``; raises ConfigError for anything else."""
    match = _GUEST_ID.fullmatch(text)
    if not match:
        raise ConfigError(f"invalid guest ID {text!r} (expected vm:<vmid> or ct:<vmid>)")
    return _KIND_BY_PREFIX[match.group(1)], int(match.group(2))


@dataclass(frozen=True)
class PeerSite:
    """The other site: how to reach its Ceph cluster, its PVE API and its nodes."""

    name: str
    api_url: str | None
    api_token: str | None
    api_verify: bool
    ceph_user: str
    ssh: str | None
    ssh_port: int
    node: str | None
    root: str = "/etc/pve"

    def files(self, root: Path) -> dict[str, Path]:
        """Give the peer's private files under ``<root>/priv/pve-mirror/``."""
        base = root / PRIV_DIR
        return {
            "ceph-conf": base / f"{self.name}.conf",
            "keyring": base / f"{self.name}.keyring",
            "api-secret": base / f"{self.name}.token",
            "api-ca": base / f"{self.name}.ca.pem",
            "ssh-key": base / f"{self.name}.ssh_key",
            "known-hosts": base / f"{self.name}.known_hosts",
        }

    def ceph_access(self, root: Path) -> ClusterAccess:
        """Give how to connect to the peer's Ceph cluster; raises ConfigError if unset up."""
        files = self.files(root)
        if not files["ceph-conf"].is_file():
            raise ConfigError(
                f"the Ceph conf of peer site {self.name} is missing "
                "(run 'pve-mirror site init' or copy it there)",
                str(files["ceph-conf"]),
            )
        options = (("keyring", str(files["keyring"])),)
        return ClusterAccess(self.name, self.ceph_user, str(files["ceph-conf"]), options)

    def api_endpoint(self, root: Path) -> HttpsEndpoint:
        """Give the peer's PVE API endpoint; raises ConfigError if no URL or token is set."""
        if not self.api_url or not self.api_token:
            raise ConfigError(
                f"peer site {self.name} has no api-url/api-token", str(root / SITE_CFG)
            )
        from pve_mirror.pve.api import HttpsEndpoint

        files = self.files(root)
        ca = files["api-ca"] if files["api-ca"].is_file() else None
        return HttpsEndpoint(self.api_url, self.api_token, files["api-secret"], ca, self.api_verify)


@dataclass(frozen=True)
class GuestEntry:
    """A mirrored guest and how it is mirrored and started."""

    kind: GuestType
    vmid: int
    mode: MirrorMode = DEFAULT_MODE
    schedule: str | None = None
    order: int | None = None
    group: str | None = None
    enabled: bool = True

    @property
    def section_id(self) -> str:
        """Give the section ID (``vm:100``)."""
        return guest_id(self.kind, self.vmid)


class SiteConfig:
    """The parsed ``pve-mirror.cfg`` with typed access and atomic saving."""

    def __init__(self, path: Path, doc: SectionConfigFile) -> None:
        self.path = path
        self.doc = doc

    @property
    def warnings(self) -> list[str]:
        """Give the problems met reading the file, one line each."""
        return self.doc.warnings

    def _sections(self, section_type: str) -> list[Section]:
        return [s for s in self.doc if s.type == section_type]

    @property
    def local_name(self) -> str:
        """Give this site's name; raises ConfigError if the file has no ``site:`` section."""
        sites = self._sections("site")
        if not sites:
            raise ConfigError("no 'site:' section: run 'pve-mirror site init'", str(self.path))
        return sites[0].id

    @property
    def concurrency(self) -> int:
        """Give how many images or guests are worked on at once (default 16).

        Concurrent snapshot-id requests share one monitor proposal, so 16 threads
        promote 50 images about ten times faster than one (measured on the lab).
        """
        sites = self._sections("site")
        return int(sites[0].get("concurrency") or 16) if sites else 16

    def local_api(self, root: Path) -> HttpsEndpoint | None:
        """Give this site's API endpoint if one is set (else pvesh on this node is used)."""
        sites = self._sections("site")
        if not sites or not sites[0].get("api-url") or not sites[0].get("api-token"):
            return None
        from pve_mirror.pve.api import HttpsEndpoint

        base = root / PRIV_DIR
        name = sites[0].id
        ca = base / f"{name}.ca.pem"
        return HttpsEndpoint(
            str(sites[0].get("api-url")),
            str(sites[0].get("api-token")),
            base / f"{name}.token",
            ca if ca.is_file() else None,
            sites[0].get("api-verify", "1") == "1",
        )

    @property
    def staging_allow(self) -> str | None:
        """Give the ``staging-allow`` value of the site section (staged-config rules allowed)."""
        sites = self._sections("site")
        return sites[0].get("staging-allow") if sites else None

    @property
    def local_node(self) -> str | None:
        """Give the node that receives failed-over guests, if the site section names one."""
        sites = self._sections("site")
        return sites[0].get("node") if sites else None

    def peer(self) -> PeerSite:
        """Give the peer site; raises ConfigError if none is configured."""
        sites = self._sections("site")
        wanted = sites[0].get("peer") if sites else None
        peers = self._sections("peer")
        chosen = [p for p in peers if wanted is None or p.id == wanted]
        if not chosen:
            raise ConfigError(
                f"no 'peer: {wanted or '<name>'}' section: run 'pve-mirror site init'",
                str(self.path),
            )
        p = chosen[0]
        return PeerSite(
            name=p.id,
            api_url=p.get("api-url"),
            api_token=p.get("api-token"),
            api_verify=p.get("api-verify", "1") == "1",
            ceph_user=p.get("ceph-user") or "admin",
            ssh=p.get("ssh"),
            ssh_port=int(p.get("ssh-port") or 22),
            node=p.get("node"),
            root=p.get("root") or "/etc/pve",
        )

    def storage_map(self) -> dict[str, str]:
        """Give local storage ID -> peer storage ID for the storages with an explicit entry."""
        return {s.id: s.get("target") or s.id for s in self._sections("storagemap")}

    def node_map(self) -> dict[str, str]:
        """Give node here -> the peer's node, for the nodes with a ``nodemap`` entry."""
        return {s.id: s.get("target") or s.id for s in self._sections("nodemap")}

    def peer_storage(self, storeid: str) -> str:
        """Give the peer's storage ID for a local one (the same ID unless mapped)."""
        return self.storage_map().get(storeid, storeid)

    def guests(self) -> list[GuestEntry]:
        """Give the mirrored guests, in VMID order."""
        out = [self._entry(s) for s in self._sections("guest")]
        return sorted((g for g in out if g is not None), key=lambda g: g.vmid)

    @staticmethod
    def _entry(section: Section) -> GuestEntry | None:
        match = _GUEST_ID.fullmatch(section.id)
        if not match:
            return None
        order = section.get("order")
        return GuestEntry(
            kind=_KIND_BY_PREFIX[match.group(1)],
            vmid=int(match.group(2)),
            mode=parse_mode(section.get("mode") or DEFAULT_MODE),
            schedule=section.get("schedule"),
            order=int(order) if order is not None else None,
            group=section.get("group"),
            enabled=section.get("enabled", "1") == "1",
        )

    def guest(self, kind: GuestType, vmid: int) -> GuestEntry | None:
        """Give the entry of one guest, or None (one section read, not the whole list)."""
        section = self.doc.get(guest_id(kind, vmid))
        if section is None or section.type != "guest":
            return None
        entry = self._entry(section)
        return entry if entry is not None and entry.kind == kind else None

    def set_guest(self, entry: GuestEntry) -> None:
        """Add or update the entry of a guest, keeping other keys and comments."""
        values = {
            "mode": entry.mode,
            "schedule": entry.schedule,
            "order": None if entry.order is None else str(entry.order),
            "group": entry.group,
            "enabled": "1" if entry.enabled else "0",
        }
        section = self.doc.get(entry.section_id)
        if section is None:
            self.doc.add("guest", entry.section_id, {k: v for k, v in values.items() if v})
            return
        for key, value in values.items():
            section.set(key, value)

    def remove_guest(self, kind: GuestType, vmid: int) -> bool:
        """Remove a guest's entry; give whether there was one."""
        if self.doc.get(guest_id(kind, vmid)) is None:
            return False
        self.doc.remove(guest_id(kind, vmid))
        return True

    def set_section(
        self, section_type: str, section_id: str, values: dict[str, str | None]
    ) -> None:
        """Create or update a section (used by ``site init``); None removes a key."""
        section = self.doc.get(section_id)
        if section is None:
            self.doc.add(section_type, section_id, {k: v for k, v in values.items() if v})
            return
        if section.type != section_type:
            raise ConfigError(
                f"section '{section_id}' is a {section.type}, not a {section_type}", str(self.path)
            )
        for key, value in values.items():
            section.set(key, value)

    def render(self) -> str:
        """Give the file's text."""
        return self.doc.render()

    def save(self) -> None:
        """Write the file atomically (temporary file + rename, as pmxcfs supports)."""
        from pve_mirror.files import write_atomic

        write_atomic(self.path, self.render().encode("utf-8", "surrogateescape"))


def load_site_config(root: Path, *, required: bool = True) -> SiteConfig:
    """Give the parsed ``<root>/pve-mirror.cfg``.

    A missing file raises NotFoundError saying to run ``site init`` (or, with
    ``required`` off, gives an empty config); an unreadable one raises ConfigError.
    """
    path = root / SITE_CFG
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        if not required:
            return SiteConfig(path, parse_section_config("", str(path), FORMAT))
        raise NotFoundError(
            f"{path} not found: this cluster is not set up for pve-mirror "
            "(run 'pve-mirror site init')"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", str(path)) from exc
    text, _bad = decode_config(data)
    return SiteConfig(path, parse_section_config(text, str(path), FORMAT))
