"""A simulated PVE cluster per lab site: /etc/pve on real pmxcfs, three nodes, an API simulator.

For a Ceph lab site ``site-a`` under lab dir ``L`` this builds::

    L/pmxcfs/site-a/etc-pve/      /etc/pve: a real pmxcfs instance (local mode, node
                                  pve-a1), or a plain directory where ../shared is absent
        storage.cfg               dir "local" (node-local), rbd "ceph-rbd" (librbd),
                                  rbd "ceph-krbd" (krbd 1)
        priv/ceph/<storeid>.keyring (0600), priv/ceph/<storeid>.conf
        nodes/pve-a1..3/{qemu-server,lxc,priv}/
    L/site-a/var-lib-vz/          the "local" storage of pve-a1 (snippets/ for hookscripts)
    L/site-a/hosts/pve-aN/        the file system of pve-a2 and pve-a3: a node-local path P
                                  of theirs is hosts/pve-aN/P (pve-a1 is this machine)
    L/site-a/pvesim/              simulator scratch: cert, token file, pid, log, guests,
                                  bin/pvesh (the lab's pvesh for this site, root@pam)

and runs ``python3 -m tests.lab.pvesim`` for it on 127.0.0.1:<mon port + 5> (a port
the Ceph lab leaves free), serving every node, with an API token
``root@pam!pve-mirror`` (in user.cfg without privilege separation, its secret in
priv/token.cfg, as ``pveum user token add root@pam pve-mirror --privsep 0`` leaves it).
The Ceph lab wipes the site dir (and the pmxcfs databases) on ``up()``, so build PVE
sites after the Ceph lab is up.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import textwrap
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.lab import procs
from tests.lab.ceph_lab import CephSite
from tests.lab.pmxcfs import PveFs
from tests.lab.wait import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3"
TOKEN_USER = "root@pam"
TOKEN_NAME = "pve-mirror"
RBD_STORAGE = "ceph-rbd"
KRBD_STORAGE = "ceph-krbd"
START_TIMEOUT = 30.0
# What the kernel RBD client supports (never journaling): layering, exclusive-lock,
# object-map, fast-diff, deep-flatten.
KRBD_FEATURES = 1 | 4 | 8 | 16 | 32

DiskSpec = tuple[str, int] | tuple[str, int, str]  # (storeid, size MiB[, image to reuse])


NODES_PER_SITE = 3


def node_name(site: str, index: int = 1) -> str:
    """Give the name of node ``index`` of a lab site: site-a -> pve-a1."""
    return f"pve-{site.removeprefix('site-')}{index}"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless the file holds it already (pmxcfs keeps mode 0640 itself)."""
    try:
        if path.read_text() == text:
            return
    except FileNotFoundError:
        pass
    path.write_text(text)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _mac(vmid: int, index: int) -> str:
    return f"BC:24:11:{(vmid >> 8) & 0xFF:02X}:{vmid & 0xFF:02X}:{index & 0xFF:02X}"


class PveSite:
    """One site's simulated PVE node (see the module docstring).

    ``start()``/``stop()``/``kill()`` run the simulator; ``api()`` gives a proxmoxer
    client; ``create_guest()`` makes RBD images and writes a guest config.
    """

    def __init__(self, ceph: CephSite, *, node: str | None = None, port: int | None = None) -> None:
        self.ceph = ceph
        self.name = ceph.name
        self.node = node or node_name(ceph.name)
        self.nodes = [self.node] + [
            n
            for n in (node_name(ceph.name, i) for i in range(1, NODES_PER_SITE + 1))
            if n != self.node
        ]
        self.fs = PveFs(ceph.dir.parent / "pmxcfs" / ceph.name, self.node)
        self.root = self.fs.mount
        self.local_path = ceph.dir / "var-lib-vz"
        self.scratch = ceph.dir / "pvesim"
        self.port = port if port is not None else ceph.mon_port + 5
        self.token_user = TOKEN_USER
        self.token_name = TOKEN_NAME

    # -- layout ------------------------------------------------------------------------
    @property
    def token_file(self) -> Path:
        """The simulator's token file (``user@realm!tokenid=secret``, 0600)."""
        return self.scratch / "api-token"

    @property
    def token(self) -> str:
        """The API token id, ``root@pam!pve-mirror``."""
        return f"{self.token_user}!{self.token_name}"

    @property
    def token_value(self) -> str:
        """The API token secret (a UUID); never print it."""
        return self.token_file.read_text().strip().partition("=")[2]

    @property
    def api_url(self) -> str:
        """The API base URL, ``https://127.0.0.1:<port>/api2/json``."""
        return f"https://127.0.0.1:{self.port}/api2/json"

    @property
    def ca_cert(self) -> Path:
        """The simulator's self-signed certificate (also usable as CA file)."""
        return self.scratch / "pve-ssl.pem"

    @property
    def fingerprint(self) -> str:
        """The certificate's SHA-256 fingerprint (AA:BB:...), once the simulator runs."""
        return str(self._ready()["fingerprint"])

    def host_root(self, node: str) -> Path:
        """Give the directory that plays ``/`` on ``node`` (``/`` itself for the first node)."""
        if node == self.node:
            return Path("/")
        return self.ceph.dir / "hosts" / node

    def node_path(self, node: str, path: Path) -> Path:
        """Give where node-local ``path`` (e.g. a dir storage's path) of ``node`` lives here."""
        return self.host_root(node) / path.relative_to("/")

    def node_dir(self, node: str | None = None) -> Path:
        """Give ``nodes/<node>`` of the config root."""
        return self.root / "nodes" / (node or self.node)

    def guest_config_path(self, kind: str, vmid: int, node: str | None = None) -> Path:
        """Give the config file of guest ``vmid`` (kind ``qemu`` or ``lxc``) on ``node``."""
        sub = "qemu-server" if kind == "qemu" else "lxc"
        return self.node_dir(node) / sub / f"{vmid}.conf"

    def guest_node(self, kind: str, vmid: int) -> str:
        """Give the node whose config dir holds guest ``vmid`` (the first node if none)."""
        for node in self.nodes:
            if self.guest_config_path(kind, vmid, node).exists():
                return node
        return self.node

    def spread_node(self, vmid: int) -> str:
        """Give the node a new lab guest lives on: the nodes take turns by VMID."""
        return self.nodes[vmid % len(self.nodes)]

    def build(self) -> None:
        """Mount /etc/pve and write it, keyrings, storage dirs and token (keeps guest configs).

        Raises PmxcfsError when pmxcfs cannot be started (or is missing under CI).
        """
        self.fs.start()
        for node in self.nodes:
            for sub in ("qemu-server", "lxc", "priv"):
                (self.node_dir(node) / sub).mkdir(parents=True, exist_ok=True)
            for sub in ("snippets", "images", "template/iso", "template/cache", "dump"):
                self.node_path(node, self.local_path / sub).mkdir(parents=True, exist_ok=True)
        if not self.fs.real:
            # pmxcfs has these links built in, pointing at its own node
            for link, target in (
                ("qemu-server", f"nodes/{self.node}/qemu-server"),
                ("lxc", f"nodes/{self.node}/lxc"),
                ("local", f"nodes/{self.node}"),
            ):
                path = self.root / link
                if not path.is_symlink():
                    path.symlink_to(target)
            (self.root / "priv").chmod(0o700)
        (self.root / "priv" / "ceph").mkdir(parents=True, exist_ok=True)
        mon = self.ceph.mon_host
        storage_cfg = textwrap.dedent(f"""\
            dir: local
            \tpath {self.local_path}
            \tcontent iso,vztmpl,backup,snippets

            rbd: {RBD_STORAGE}
            \tcontent images,rootdir
            \tkrbd 0
            \tmonhost {mon}
            \tpool {self.ceph.pool}
            \tusername admin

            rbd: {KRBD_STORAGE}
            \tcontent images,rootdir
            \tkrbd 1
            \tmonhost {mon}
            \tpool {self.ceph.pool}
            \tusername admin
            """)
        _write_if_changed(self.root / "storage.cfg", storage_cfg)
        keyring = self.ceph.admin_keyring.read_text()
        for storeid in (RBD_STORAGE, KRBD_STORAGE):
            key_path = self.root / "priv" / "ceph" / f"{storeid}.keyring"
            _write_private(key_path, keyring)
            _write_private(
                self.root / "priv" / "ceph" / f"{storeid}.conf",
                f"[global]\nmon_host = {mon}\nkeyring = {key_path}\n",
            )
        self.scratch.mkdir(parents=True, exist_ok=True)
        if not self.token_file.exists():
            _write_private(self.token_file, f"{self.token}={uuid.uuid4()}\n")
        from tests.lab import pveadmin

        if f"token:{self.token}:0:0:" not in _read(self.root / "user.cfg") or (
            f"{self.token} {self.token_value}" not in _read(self.root / "priv" / "token.cfg")
        ):
            pveadmin.add_token(
                self.root, self.token_user, self.token_name, privsep=False, secret=self.token_value
            )
        self._write_pvesh()

    @property
    def bin_dir(self) -> Path:
        """Give the directory holding this site's lab ``pvesh`` (put it first on PATH)."""
        return self.scratch / "bin"

    def _write_pvesh(self) -> None:
        """Write ``bin/pvesh``: tests/lab/pvesh.py against this site's simulator."""
        script = self.bin_dir / "pvesh"
        script.parent.mkdir(parents=True, exist_ok=True)
        text = (
            "#!/bin/sh\n"
            f"# pvesh of lab site {self.name} (tests/lab/pvesh.py): root@pam on its simulator\n"
            f"PYTHONPATH={REPO_ROOT} exec {PYTHON} -m tests.lab.pvesh "
            f'--scratch {self.scratch} "$@"\n'
        )
        if _read(script) != text:
            script.write_text(text)
        script.chmod(0o755)

    def env_with_pvesh(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """Give ``env`` (default: this process's) with this site's pvesh first on PATH."""
        base = dict(os.environ if env is None else env)
        base["PATH"] = f"{self.bin_dir}:{base.get('PATH', '/usr/bin:/bin')}"
        return base

    # -- the simulator process ---------------------------------------------------------
    def _spec(self) -> procs.DaemonSpec:
        return procs.DaemonSpec(
            name=f"pvesim-{self.name}",
            argv=[
                PYTHON, "-m", "tests.lab.pvesim",
                "--root", str(self.root),
                "--scratch", str(self.scratch),
                "--port", str(self.port),
                "--token-file", str(self.token_file),
                *(f"--node-root={n}={self.host_root(n)}" for n in self.nodes[1:]),
                "--verbose",
            ],
            cwd=REPO_ROOT,
            log=self.scratch / "pvesim.log",
            pid_file=self.scratch / "pvesim.pid",
            marker=str(self.root),
        )  # fmt: skip

    def pid(self) -> int | None:
        """Give the simulator's PID while it runs."""
        return procs.running_pid(self._spec())

    def running(self) -> bool:
        """Tell whether the simulator process runs."""
        return self.pid() is not None

    def _ready(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.scratch / "pvesim.ready").read_text())
        return data

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Build the config root if needed and start the simulator; wait until it serves.

        Does nothing if it already runs. Raises RuntimeError (with the log tail) if the
        process exits early, WaitTimeoutError if it does not listen in time.
        """
        if self.running():
            return
        self.build()
        spec = self._spec()
        (self.scratch / "pvesim.ready").unlink(missing_ok=True)
        pid = procs.start(spec)

        def ready() -> bool:
            why = procs.exited_early(spec)
            if why:
                tail = spec.log.read_text(errors="replace").strip().splitlines()[-10:]
                raise RuntimeError(f"pvesim for {self.name} {why}: " + "\n".join(tail))
            try:
                if self._ready().get("pid") != pid:
                    return False
            except (FileNotFoundError, ValueError):
                return False
            with socket.socket() as sock:
                sock.settimeout(1.0)
                return sock.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(ready, timeout=timeout, what=f"PVE simulator of {self.name} to listen")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the simulator (SIGTERM): its guests stop, the port refuses connections."""
        pid = self.pid()
        if pid is not None:
            spec = self._spec()
            procs.stop_pids({pid: (spec.argv[0], spec.marker)}, timeout=timeout)

    def kill(self) -> None:
        """Kill the simulator at once (SIGKILL), like a node losing power.

        Its qemu-io guests see their stdin close and exit; no hookscripts run.
        """
        pid = self.pid()
        if pid is not None:
            spec = self._spec()
            procs.stop_pids({pid: (spec.argv[0], spec.marker)}, timeout=5.0, sig=signal.SIGKILL)

    def api(self, timeout: float = 30.0) -> Any:
        """Give a proxmoxer ProxmoxAPI (https backend, API token, verifying our cert)."""
        from proxmoxer import ProxmoxAPI

        return ProxmoxAPI(
            "127.0.0.1",
            port=self.port,
            user=self.token_user,
            token_name=self.token_name,
            token_value=self.token_value,
            verify_ssl=str(self.ca_cert),
            backend="https",
            timeout=timeout,
        )

    # -- guests ------------------------------------------------------------------------
    def write_hookscript(self, filename: str, text: str) -> str:
        """Write an executable snippet to the ``local`` storage; give its volume ID."""
        path = self.local_path / "snippets" / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
        return f"local:snippets/{filename}"

    def create_image(self, image: str, size_mib: int, *, krbd: bool) -> None:
        """Create RBD image ``image`` in the site's pool (krbd: only kernel features).

        Raises rbd.ImageExists if it exists.
        """
        import rbd

        with self.ceph.ioctx() as ioctx:
            rbd.RBD().create(
                ioctx, image, size_mib * 1024 * 1024, features=KRBD_FEATURES if krbd else None
            )

    def create_guest(
        self,
        kind: str,
        vmid: int,
        disks: Sequence[DiskSpec],
        *,
        name: str | None = None,
        hookscript: str | None = None,
        node: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> Path:
        """Create the guest's RBD images and write its config; give the config path.

        ``disks`` are ``(storeid, size_mib)`` (image ``vm-<vmid>-disk-<N>`` is created)
        or ``(storeid, size_mib, image)`` (an existing image, e.g. a replicated one, is
        used as is). VMs get scsi0..N, CTs rootfs and mp0..N. Raises ValueError for a
        bad kind or storage, rbd errors if an image cannot be created.
        """
        if kind not in ("qemu", "lxc"):
            raise ValueError(f"guest kind must be qemu or lxc, not {kind!r}")
        storages = {RBD_STORAGE: False, KRBD_STORAGE: True}
        volumes: list[tuple[str, int]] = []
        for index, spec in enumerate(disks):
            storeid, size = spec[0], spec[1]
            if storeid not in storages:
                raise ValueError(f"storage {storeid!r} is not an RBD storage of {self.name}")
            if len(spec) == 3:
                image = spec[2]
            else:
                image = f"vm-{vmid}-disk-{index}"
                # containers always map through krbd, whatever the storage says
                self.create_image(image, size, krbd=storages[storeid] or kind == "lxc")
            volumes.append((f"{storeid}:{image}", size))
        values = self._qemu_values(vmid, name, volumes) if kind == "qemu" else (
            self._lxc_values(vmid, name, volumes)
        )  # fmt: skip
        if hookscript:
            values["hookscript"] = hookscript
        values.update(extra or {})
        path = self.guest_config_path(kind, vmid, node)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(f"{k}: {v}\n" for k, v in sorted(values.items())))
        tmp.rename(path)
        return path

    @staticmethod
    def _qemu_values(vmid: int, name: str | None, volumes: list[tuple[str, int]]) -> dict[str, str]:
        values = {
            "boot": "order=" + ";".join([f"scsi{i}" for i in range(len(volumes))] + ["net0"]),
            "cores": "1",
            "cpu": "x86-64-v2-AES",
            "memory": "512",
            "meta": f"creation-qemu=8.1.5,ctime={int(time.time())}",
            "name": name or f"vm{vmid}",
            "net0": f"virtio={_mac(vmid, 0)},bridge=vmbr0,firewall=1",
            "numa": "0",
            "ostype": "l26",
            "scsihw": "virtio-scsi-single",
            "smbios1": f"uuid={uuid.uuid4()}",
            "sockets": "1",
            "vmgenid": str(uuid.uuid4()),
        }
        for i, (volume, size) in enumerate(volumes):
            values[f"scsi{i}"] = f"{volume},iothread=1,size={size}M"
        return values

    @staticmethod
    def _lxc_values(vmid: int, name: str | None, volumes: list[tuple[str, int]]) -> dict[str, str]:
        values = {
            "arch": "amd64",
            "cores": "1",
            "features": "nesting=1",
            "hostname": name or f"ct{vmid}",
            "memory": "512",
            "net0": f"name=eth0,bridge=vmbr0,firewall=1,hwaddr={_mac(vmid, 0)},ip=dhcp,type=veth",
            "ostype": "debian",
            "swap": "512",
            "unprivileged": "1",
        }
        for i, (volume, size) in enumerate(volumes):
            if i == 0:
                values["rootfs"] = f"{volume},size={size}M"
            else:
                values[f"mp{i - 1}"] = f"{volume},mp=/mnt/data{i - 1},size={size}M"
        return values


def pve_sites_for(ceph_sites: dict[str, CephSite]) -> dict[str, PveSite]:
    """Give a PveSite per Ceph lab site (not started)."""
    return {name: PveSite(site) for name, site in ceph_sites.items()}
