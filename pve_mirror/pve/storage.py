"""``storage.cfg``: the storages of a PVE cluster, and how to reach the Ceph behind an RBD one.

Read like PVE::Storage does (see :mod:`pve_mirror.pve.sectionconfig`). Only the RBD
plugin's properties are checked in detail; the other storage types are known by name
(so that a disk on them is reported as "not RBD", not as "unknown storage") and their
properties are kept as written.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pve_mirror.ceph.access import ClusterAccess
from pve_mirror.errors import ConfigError
from pve_mirror.pve.sectionconfig import (
    Prop,
    Section,
    SectionConfigFile,
    SectionFormat,
    boolean,
    fixed,
    parse_section_config,
    string,
)

STORAGE_CFG = "storage.cfg"

# Storage types of pve-storage (and common third-party plugins): known, not checked.
OTHER_TYPES = (
    "dir",
    "lvm",
    "lvmthin",
    "zfspool",
    "zfs",
    "nfs",
    "cifs",
    "glusterfs",
    "cephfs",
    "iscsi",
    "iscsidirect",
    "btrfs",
    "pbs",
    "esxi",
)

_LIST_SPLIT = re.compile(r"[\0\s,;]+", re.ASCII)
_NODE = r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?"
RBD_CONTENT = ("images", "rootdir")


def split_list(text: str) -> tuple[str, ...]:
    """Give the items of a PVE list value (separated by spaces, commas, semicolons)."""
    return tuple(item for item in _LIST_SPLIT.split(text) if item)


def _content_list(allowed: tuple[str, ...]) -> Prop:
    def check(value: str | None) -> str:
        if value is None:
            raise ValueError("missing value")
        items = split_list(value)
        bad = [i for i in items if i not in allowed]
        if bad:
            raise ValueError(f"invalid content type '{bad[0]}' (allowed: {', '.join(allowed)})")
        return ",".join(items)

    return Prop(check)


def _node_list(value: str | None) -> str:
    if value is None:
        raise ValueError("missing value")
    nodes = split_list(value)
    for node in nodes:
        if not re.fullmatch(_NODE, node, re.ASCII):
            raise ValueError(f"invalid node name '{node}'")
    return ",".join(nodes)


def _monhost(value: str | None) -> str:
    if value is None:
        raise ValueError("missing value")
    hosts = split_list(value)
    if not hosts:
        raise ValueError("empty monitor host list")
    for host in hosts:
        if not re.fullmatch(r"[\w.:\[\]-]+", host, re.ASCII):
            raise ValueError(f"invalid monitor address '{host}'")
    return " ".join(hosts)


_RBD_SCHEMA: dict[str, Prop] = {
    "nodes": Prop(_node_list),
    "disable": Prop(boolean),
    "monhost": Prop(_monhost),
    "pool": Prop(string(r"[^/@\s]+", "pool name")),
    "data-pool": Prop(string(r"[^/@\s]+", "pool name")),
    "namespace": Prop(string(r"[^/@\s]+", "namespace")),
    "username": Prop(string(r"[^\s]+", "user name")),
    "content": _content_list(RBD_CONTENT),
    "krbd": Prop(boolean),
    "bwlimit": Prop(string()),
    "shared": Prop(fixed("'shared' is fixed to 1 for rbd storages")),
    "keyring": Prop(fixed("the keyring is not stored in storage.cfg")),
}

STORAGE_FORMAT = SectionFormat(types={"rbd": _RBD_SCHEMA, **dict.fromkeys(OTHER_TYPES)})


@dataclass(frozen=True)
class Storage:
    """One storage of ``storage.cfg``; ``options`` holds its properties as written."""

    storeid: str
    type: str
    content: tuple[str, ...] = ()
    disabled: bool = False
    nodes: tuple[str, ...] = ()
    options: Mapping[str, str] = field(default_factory=dict, compare=False)
    line: int | None = None

    def available_on(self, node: str) -> bool:
        """Tell whether the storage may be used on ``node`` (its ``nodes`` list)."""
        return not self.nodes or node in self.nodes


@dataclass(frozen=True)
class CephConnection:
    """How to reach the Ceph cluster behind an RBD storage, as PVE does.

    Names files only: a key never passes through this object.
    """

    conf_file: Path | None
    mon_host: str | None
    keyring: Path
    client_id: str

    def rados_conf(self) -> dict[str, str]:
        """Give the options for ``rados.Rados(conf=...)`` (keyring, and mon_host if external)."""
        conf = {"keyring": str(self.keyring)}
        if self.mon_host:
            conf["mon_host"] = self.mon_host
        return conf

    def access(self, name: str) -> ClusterAccess:
        """Give the access the Ceph adapter connects with; ``name`` is for messages."""
        conffile = str(self.conf_file) if self.conf_file else None
        return ClusterAccess(
            name, self.client_id, conffile, tuple(sorted(self.rados_conf().items()))
        )

    def rados_kwargs(self) -> dict[str, object]:
        """Give the keyword arguments for ``rados.Rados(**kwargs)``."""
        kwargs: dict[str, object] = {"rados_id": self.client_id, "conf": self.rados_conf()}
        # An empty conffile makes librados read none (not /etc/ceph/ceph.conf).
        kwargs["conffile"] = str(self.conf_file) if self.conf_file else ""
        return kwargs

    def cli_args(self) -> list[str]:
        """Give the connection options for the ``rbd``/``ceph`` command line."""
        args = ["--id", self.client_id, "--keyring", str(self.keyring)]
        if self.conf_file:
            args += ["-c", str(self.conf_file)]
        if self.mon_host:
            args += ["-m", self.mon_host]
        return args


@dataclass(frozen=True)
class RbdStorage(Storage):
    """An RBD storage: where its images are, and how PVE maps them."""

    pool: str = "rbd"
    data_pool: str | None = None
    namespace: str = ""
    monhost: tuple[str, ...] = ()
    username: str = "admin"
    krbd: bool = False

    @property
    def hyperconverged(self) -> bool:
        """True when the Ceph cluster is the one PVE manages (no ``monhost``)."""
        return not self.monhost

    def connection(self, root: Path) -> CephConnection:
        """Give the files and monitors PVE itself would use for this storage.

        Hyperconverged: ``<root>/ceph.conf``; external: ``monhost``; both use
        ``<root>/priv/ceph/<storeid>.keyring``, and ``<root>/priv/ceph/<storeid>.conf``
        when it exists.
        """
        priv = root / "priv" / "ceph"
        own_conf = priv / f"{self.storeid}.conf"
        keyring = priv / f"{self.storeid}.keyring"
        conf_file: Path | None = own_conf if _exists(own_conf) else None
        if self.hyperconverged:
            return CephConnection(conf_file or root / "ceph.conf", None, keyring, self.username)
        mon_host = ",".join(_mon_address(m) for m in self.monhost)
        return CephConnection(conf_file, mon_host, keyring, self.username)


def _exists(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def _mon_address(host: str) -> str:
    """Give ``host`` fit for a ``mon_host`` list: bare IPv6 addresses get brackets."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


# PVE adds this storage when storage.cfg does not define it.
DEFAULT_LOCAL = Storage(
    "local",
    "dir",
    content=("images", "iso", "vztmpl", "backup", "rootdir", "snippets"),
    options={"path": "/var/lib/vz"},
)


@dataclass
class StorageConfig:
    """The storages of ``storage.cfg`` and the problems met reading it."""

    storages: dict[str, Storage]
    warnings: list[str] = field(default_factory=list)
    path: Path | None = None
    document: SectionConfigFile | None = None

    def get(self, storeid: str) -> Storage | None:
        """Give the storage ``storeid``, or None."""
        return self.storages.get(storeid)

    def rbd(self) -> list[RbdStorage]:
        """Give the RBD storages, in file order."""
        return [s for s in self.storages.values() if isinstance(s, RbdStorage)]


def parse_storage_config(text: str, path: str = STORAGE_CFG) -> StorageConfig:
    """Give the storages in ``text``; bad lines become warnings (``file:line: ...``)."""
    doc = parse_section_config(text, path, STORAGE_FORMAT)
    storages: dict[str, Storage] = {}
    for section in doc:
        storages[section.id] = _storage(section)
    storages.setdefault("local", DEFAULT_LOCAL)
    return StorageConfig(storages, doc.warnings, Path(path), doc)


def load_storage_config(root: Path) -> StorageConfig:
    """Give the storages of ``<root>/storage.cfg``.

    A missing file gives only the default ``local`` storage and a warning; an unreadable
    one raises ConfigError. Invalid UTF-8 is a warning; the rest is read.
    """
    path = root / STORAGE_CFG
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        config = parse_storage_config("", str(path))
        config.warnings.append(f"{path}: not found, only the default 'local' storage is known")
        return config
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", str(path)) from exc
    text, bad_line = decode_config(data)
    config = parse_storage_config(text, str(path))
    if bad_line is not None:
        config.warnings.insert(0, f"{path}:{bad_line}: invalid UTF-8, read as is")
    return config


def decode_config(data: bytes) -> tuple[str, int | None]:
    """Give ``data`` as text (invalid UTF-8 kept as surrogates) and the first bad line."""
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return data.decode("utf-8", "surrogateescape"), data.count(b"\n", 0, exc.start) + 1


def _storage(section: Section) -> Storage:
    values = section.values
    disabled = values.get("disable") == "1"
    nodes = split_list(values.get("nodes", ""))
    if section.type != "rbd":
        return Storage(
            section.id,
            section.type,
            content=split_list(values.get("content", "")),
            disabled=disabled,
            nodes=nodes,
            options=dict(values),
            line=section.line,
        )
    return RbdStorage(
        section.id,
        section.type,
        content=split_list(values.get("content", "images")),
        disabled=disabled,
        nodes=nodes,
        options=dict(values),
        line=section.line,
        pool=values.get("pool", "rbd"),
        data_pool=values.get("data-pool"),
        namespace=values.get("namespace", ""),
        monhost=split_list(values.get("monhost", "")),
        username=values.get("username", "admin"),
        krbd=values.get("krbd") == "1",
    )
