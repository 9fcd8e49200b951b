"""The simulator's own reading of a config root laid out like /etc/pve.

Deliberately independent of pve_mirror's parsers: the simulator stands in for
Proxmox, so it reads the files the way PVE does, in a few lines, and is re-read on
every request (the config root plays pmxcfs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("qemu", "lxc")
CONF_DIR = {"qemu": "qemu-server", "lxc": "lxc"}

_KEY_RE = re.compile(r"^([a-z][a-z_\-]*\d*):\s*(.+?)\s*$")
_CT_RAW_RE = re.compile(r"^(lxc\.[a-z0-9_\-.]+)(?::|\s*=)\s*(.*?)\s*$")
_SECTION_RE = re.compile(r"^\[([^\]]+)\]\s*$")
_STORE_HEADER_RE = re.compile(r"^(\S+):\s*(\S+)\s*$")
_STORE_PROP_RE = re.compile(r"^\s+(\S+)(\s+(.*\S))?\s*$")
_VOLUME_RE = re.compile(r"^([a-z][a-z0-9\-_.]*[a-z0-9]):(.+)$")
_VM_DISK_RE = re.compile(r"^(ide[0-3]|sata[0-5]|scsi\d+|virtio\d+|efidisk0|tpmstate0)$")
_CT_DISK_RE = re.compile(r"^(rootfs|mp\d+)$")
NODE_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?$")


class ConfigError(Exception):
    """A config file the simulator cannot use; the message reads like PVE's."""


@dataclass(frozen=True)
class Storage:
    """One storage.cfg section."""

    storeid: str
    type: str
    props: dict[str, str]

    @property
    def path(self) -> Path | None:
        """Give the path of a dir storage, None for others."""
        p = self.props.get("path")
        return Path(p) if p else None


@dataclass(frozen=True)
class Disk:
    """A guest disk key and what it points to."""

    key: str
    volume: str
    storeid: str | None
    volname: str

    @property
    def image(self) -> str:
        """Give the RBD image name (the part after '/' for a linked clone)."""
        return self.volname.rsplit("/", 1)[-1]


@dataclass
class GuestConfig:
    """The current section of one guest config file."""

    kind: str
    vmid: int
    node: str
    path: Path
    values: dict[str, str] = field(default_factory=dict)
    description: str = ""

    @property
    def name(self) -> str:
        """Give the guest name as PVE shows it (VM name, CT hostname)."""
        key = "name" if self.kind == "qemu" else "hostname"
        return self.values.get(key, f"{'VM' if self.kind == 'qemu' else 'CT'}{self.vmid}")

    @property
    def lock(self) -> str | None:
        """Give the config lock, if any."""
        return self.values.get("lock")

    @property
    def template(self) -> bool:
        """Tell whether the guest is a template."""
        return self.values.get("template", "0") == "1"

    def disks(self) -> list[Disk]:
        """Give the guest's disks (volumes and paths; no cdrom/none), first disk first.

        The first disk (where the heartbeat goes) is a CT's rootfs, or a VM's first
        boot disk; the rest follow by bus and number, efidisk/tpmstate last.
        """
        return sorted(self._disks(), key=self._disk_rank)

    def _disk_rank(self, disk: Disk) -> tuple[int, int, int]:
        m = re.match(r"^([a-z]+)(\d*)$", disk.key)
        bus, num = (m.group(1), int(m.group(2) or 0)) if m else (disk.key, 0)
        boot = self.values.get("boot", "")
        order = split_property_string(boot, "legacy").get("order", "").split(";")
        if disk.key in order:
            return (0, order.index(disk.key), 0)
        buses = ["rootfs", "mp", "ide", "sata", "scsi", "virtio", "efidisk", "tpmstate"]
        return (1, buses.index(bus) if bus in buses else len(buses), num)

    def _disks(self) -> list[Disk]:
        disk_re = _VM_DISK_RE if self.kind == "qemu" else _CT_DISK_RE
        out = []
        for key, value in self.values.items():
            if not disk_re.match(key):
                continue
            props = split_property_string(value, "file" if self.kind == "qemu" else "volume")
            volume = props.get("file") or props.get("volume") or ""
            if props.get("media") == "cdrom" or volume in ("", "none", "cdrom"):
                continue
            m = _VOLUME_RE.match(volume)
            if m:
                out.append(Disk(key=key, volume=volume, storeid=m.group(1), volname=m.group(2)))
            elif volume.startswith("/"):
                out.append(Disk(key=key, volume=volume, storeid=None, volname=volume))
        return out


def split_property_string(value: str, default_key: str) -> dict[str, str]:
    """Split a PVE property string ``a,k=v,...``; the bare first item goes to ``default_key``."""
    out: dict[str, str] = {}
    for i, part in enumerate(value.split(",")):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
        elif i == 0:
            out[default_key] = part.strip()
    if "volume" in out and default_key == "file":
        out.setdefault("file", out["volume"])
    return out


def read_storage_cfg(root: Path) -> dict[str, Storage]:
    """Give the storages of ``<root>/storage.cfg`` (plus PVE's implicit ``local``)."""
    out: dict[str, Storage] = {}
    path = root / "storage.cfg"
    text = path.read_text() if path.exists() else ""
    current: Storage | None = None
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        if not line.strip():
            current = None
            continue
        header = _STORE_HEADER_RE.match(line)
        if header and not line[0].isspace():
            current = Storage(storeid=header.group(2), type=header.group(1).lower(), props={})
            out[current.storeid] = current
            continue
        prop = _STORE_PROP_RE.match(line)
        if prop and current is not None:
            current.props[prop.group(1)] = prop.group(3) if prop.group(3) is not None else "1"
    if "local" not in out:
        out["local"] = Storage(
            "local", "dir", {"path": "/var/lib/vz", "content": "iso,vztmpl,backup"}
        )
    return out


def parse_guest_config(kind: str, vmid: int, node: str, path: Path, text: str) -> GuestConfig:
    """Give the current section (before the first ``[section]``) of a guest config."""
    conf = GuestConfig(kind=kind, vmid=vmid, node=node, path=path)
    desc: list[str] = []
    for line in text.splitlines():
        if _SECTION_RE.match(line):
            break
        if line.startswith("#"):
            desc.append(line[1:])
            continue
        if not line.strip():
            continue
        m = _KEY_RE.match(line) or (_CT_RAW_RE.match(line) if kind == "lxc" else None)
        if m:
            conf.values[m.group(1)] = m.group(2)
    conf.description = "\n".join(desc)
    return conf


def list_nodes(root: Path) -> list[str]:
    """Give the node names of the config root (directories under ``nodes/``)."""
    nodes = root / "nodes"
    if not nodes.is_dir():
        return []
    return sorted(p.name for p in nodes.iterdir() if p.is_dir() and NODE_RE.match(p.name))


def list_guests(root: Path) -> list[GuestConfig]:
    """Give every guest config of every node, ordered by vmid."""
    out = []
    for node in list_nodes(root):
        for kind in KINDS:
            d = root / "nodes" / node / CONF_DIR[kind]
            if not d.is_dir():
                continue
            for f in d.glob("*.conf"):
                if f.stem.isdigit():
                    try:
                        text = f.read_text()
                    except FileNotFoundError:  # renamed away between listing and reading
                        continue
                    out.append(parse_guest_config(kind, int(f.stem), node, f, text))
    return sorted(out, key=lambda g: g.vmid)


def load_guest(root: Path, node: str, kind: str, vmid: int) -> GuestConfig:
    """Give a guest's config on ``node``; raises ConfigError as PVE words it."""
    rel = f"nodes/{node}/{CONF_DIR[kind]}/{vmid}.conf"
    path = root / rel
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"Configuration file '{rel}' does not exist") from None
    return parse_guest_config(kind, vmid, node, path, text)


def node_local_path(storage: Storage, node_root: Path | None) -> Path | None:
    """Give a dir storage's path as the node whose ``/`` is ``node_root`` sees it.

    A storage without ``shared 1`` is node-local (pve-storage's ``dir`` plugin: each
    node has its own files at the same path); ``node_root`` None means this machine.
    """
    if storage.path is None:
        return None
    if node_root is None or storage.props.get("shared") == "1":
        return storage.path
    return node_root / storage.path.relative_to("/")


def hookscript_path(root: Path, volume: str, node_root: Path | None = None) -> Path:
    """Give the file of a hookscript volume ``<storeid>:snippets/<file>`` on a node.

    ``node_root`` is the node's ``/`` (see node_local_path). Raises ConfigError when
    the storage is unknown or has no path, or the volume is not a snippet.
    """
    m = _VOLUME_RE.match(volume)
    if not m:
        raise ConfigError(f"unable to parse volume ID '{volume}'")
    storeid, volname = m.groups()
    storage = read_storage_cfg(root).get(storeid)
    if storage is None:
        raise ConfigError(f"storage '{storeid}' does not exist")
    if storage.path is None:
        raise ConfigError(f"storage '{storeid}' has no snippets path")
    if not volname.startswith("snippets/") or "/" in volname[len("snippets/") :]:
        raise ConfigError(f"unable to parse directory volume name '{volname}'")
    base = node_local_path(storage, node_root)
    assert base is not None
    return base / volname


def ceph_conf_lines(root: Path, storage: Storage) -> dict[str, str]:
    """Give the client settings for an external RBD storage: mon_host, keyring, conf."""
    out: dict[str, str] = {}
    monhost = storage.props.get("monhost")
    if monhost:
        out["mon_host"] = ",".join(monhost.replace(";", " ").replace(",", " ").split())
    keyring = root / "priv" / "ceph" / f"{storage.storeid}.keyring"
    if keyring.exists():
        out["keyring"] = str(keyring)
    conf = root / "priv" / "ceph" / f"{storage.storeid}.conf"
    if conf.exists():
        out["conf"] = str(conf)
    elif not monhost:
        out["conf"] = str(root / "ceph.conf")
    return out
