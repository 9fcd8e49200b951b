"""The two-site Ceph lab: two real single-host Ceph 16.2 clusters on loopback.

Each site ("site-a", "site-b") has one mon, one mgr (with the rbd_support module), one
bluestore OSD on a sparse file, pool ``rbd`` in ``image`` mirror mode and an rbd-mirror
daemon; the sites are peered two-way (rx-tx) with a bootstrap token. Everything lives
under one scratch directory (default ``<repo>/.lab``, or ``PVE_MIRROR_LAB_DIR``) and on
ports from a port base (``PVE_MIRROR_LAB_PORT_BASE``, default 20000: below the kernel's
ephemeral port range, so no outgoing connection takes a lab port; site k uses
base+100k+1 for its mon and base+100k+10..99 for the rest), so labs can coexist.

The lab installs nothing: it checks for the Debian packages and names what to install.
Every process it starts is recorded by PID and stopped by PID; waits are bounded.
See /work/shared/notes/ceph-lab.md for the gotchas the comments refer to.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab import ceph_release, procs
from tests.lab.wait import WaitTimeoutError, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
SITE_NAMES = ("site-a", "site-b")
POOL = "rbd"
DEFAULT_PORT_BASE = 20000
ENV_DIR = "PVE_MIRROR_LAB_DIR"
ENV_PORT_BASE = "PVE_MIRROR_LAB_PORT_BASE"

MON_ID = "a"
MGR_ID = "x"
OSD_ID = 0
OSD_BLOCK_BYTES = 8 << 30  # sparse; only what is written is allocated
UP_TIMEOUT = 120.0
CLI_TIMEOUT = 60.0

# gotcha 19: clients must not hang forever on a dead site.
CLIENT_TIMEOUTS = {
    "client_mount_timeout": "15",
    "rados_mon_op_timeout": "30",
    "rados_osd_op_timeout": "60",
}

# Debian package -> a file it installs that the lab needs.
REQUIRED_FILES = {
    "ceph-mon": "/usr/bin/ceph-mon",
    "ceph-mgr": "/usr/bin/ceph-mgr",
    "ceph-osd": "/usr/bin/ceph-osd",
    "rbd-mirror": "/usr/bin/rbd-mirror",
    "ceph-common": "/usr/bin/rbd",
    "ceph-base": "/usr/bin/monmaptool",
    "ceph-mgr-modules-core": "/usr/share/ceph/mgr/rbd_support",
}
REQUIRED_MODULES = {"python3-rados": "rados", "python3-rbd": "rbd"}


class LabError(RuntimeError):
    """The lab cannot be brought up, used or taken down; the message says why."""


def check_prerequisites() -> None:
    """Return if the Ceph binaries and Python bindings are installed.

    Raises LabError naming the ``apt-get install`` line otherwise (the lab never
    installs anything itself).
    """
    missing = [pkg for pkg, path in REQUIRED_FILES.items() if not Path(path).exists()]
    for pkg, module in REQUIRED_MODULES.items():
        try:
            __import__(module)
        except ImportError:
            missing.append(pkg)
    if missing:
        raise LabError(
            "the Ceph lab needs Debian packages that are missing; install them with:\n"
            "  apt-get install -y --no-install-recommends " + " ".join(sorted(set(missing))) + "\n"
            "(or run `make deps`; the lab must run under /usr/bin/python3 or .venv/bin/python)"
        )


def _cephx_key() -> str:
    """Give a fresh cephx secret in the keyring encoding (type, created, len, secret).

    Of the type and length the installed Ceph makes (AES-256 from 20.2 on).
    """
    key_type, length = ceph_release.cephx_key_format()
    header = struct.pack("<HIIH", key_type, int(time.time()), 0, length)
    return base64.b64encode(header + os.urandom(length)).decode()


def _keyring_entry(entity: str, key: str, caps: dict[str, str]) -> str:
    lines = [f"[{entity}]", f"\tkey = {key}"]
    lines += [f'\tcaps {service} = "{cap}"' for service, cap in caps.items()]
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _lean_mgr_disabled_modules() -> str:
    """Give every mgr module except rbd_support (gotcha 10: a lean mgr, ~55 MiB)."""
    mgr_dir = Path("/usr/share/ceph/mgr")
    names = sorted(
        p.name for p in mgr_dir.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))
    )
    return ",".join(n for n in names if n != "rbd_support")


def port_free(port: int) -> bool:
    """Tell whether nothing listens on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


@dataclass
class CephSite:
    """One site of the lab and how a client reaches it.

    ``conf`` is a full Ceph conf (mon_host, keyring of client.admin) usable as
    ``rados.Rados(conffile=str(conf))`` and ``rbd -c conf``.
    """

    name: str
    conf: Path
    admin_keyring: Path
    mon_host: str
    fsid: str
    pool: str = POOL
    dir: Path = field(default_factory=Path)
    index: int = 1
    mon_port: int = 0
    bind_ports: tuple[int, int] = (0, 0)

    def rados_conf(self) -> dict[str, str]:
        """Give the ``rados.Rados(conf=...)`` options: keyring and client timeouts."""
        return {"keyring": str(self.admin_keyring), **CLIENT_TIMEOUTS}

    @contextlib.contextmanager
    def rados(self, connect_timeout: float = 15.0) -> Iterator[Any]:
        """Give a connected ``rados.Rados`` as client.admin (with timeouts); shut it down after.

        Raises rados.Error (e.g. TimedOut) when the site cannot be reached.
        """
        import rados

        conf = self.rados_conf()
        conf["client_mount_timeout"] = str(int(connect_timeout))
        cluster = rados.Rados(conffile=str(self.conf), rados_id="admin", conf=conf)
        try:
            cluster.connect(timeout=int(connect_timeout))
            yield cluster
        finally:
            cluster.shutdown()

    @contextlib.contextmanager
    def ioctx(self, pool: str | None = None) -> Iterator[Any]:
        """Give an open ``rados.Ioctx`` on ``pool`` (default the site's pool)."""
        with self.rados() as cluster:
            ioctx = cluster.open_ioctx(pool or self.pool)
            try:
                yield ioctx
            finally:
                ioctx.close()

    def cli(self, tool: str, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        """Run ``ceph`` or ``rbd`` against this site as client.admin; give stdout.

        Raises LabError with stderr when the command fails or times out.
        """
        argv = [tool, "-c", str(self.conf), "--id", "admin"]
        if tool == "ceph":
            argv += ["--connect-timeout", "15"]
        argv += list(args)
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=dict(os.environ, LC_ALL="C"),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"{self.name}: `{' '.join(argv)}` timed out after {timeout} s") from exc
        if proc.returncode != 0:
            raise LabError(
                f"{self.name}: `{' '.join(argv)}` failed ({proc.returncode}): "
                f"{proc.stderr.strip()[-500:]}"
            )
        return proc.stdout

    # -- paths -----------------------------------------------------------------------
    @property
    def log_dir(self) -> Path:
        return self.dir / "log"

    @property
    def pid_dir(self) -> Path:
        return self.dir / "pids"

    @property
    def mgr_python_dir(self) -> Path:
        """Where lab-only stand-in modules for ceph-mgr live (see tests/lab/ceph_release.py)."""
        return self.dir / "mgr-python"

    def keyring(self, entity: str) -> Path:
        return self.dir / "keyrings" / f"{entity}.keyring"

    @property
    def mirror_user(self) -> str:
        return f"rbd-mirror.{self.name}"

    def daemon_specs(self) -> dict[str, procs.DaemonSpec]:
        """Give how to start each of this site's daemons, in start order."""
        conf = str(self.conf)

        def spec(name: str, argv: list[str], env: dict[str, str] | None = None) -> procs.DaemonSpec:
            return procs.DaemonSpec(
                name=name,
                argv=argv,
                cwd=self.dir,
                log=self.log_dir / f"{name}.out",
                pid_file=self.pid_dir / f"{name}.pid",
                marker=conf,
                env=tuple(sorted((env or {}).items())),
            )

        return {
            "mon": spec("mon", ["/usr/bin/ceph-mon", "-f", "-c", conf, "-i", MON_ID]),
            "mgr": spec(
                "mgr",
                ["/usr/bin/ceph-mgr", "-f", "-c", conf, "-i", MGR_ID],
                ceph_release.mgr_env(self.mgr_python_dir),
            ),
            "osd": spec("osd", ["/usr/bin/ceph-osd", "-f", "-c", conf, "-i", str(OSD_ID)]),
            # gotcha 4: rbd-mirror reads ./<cluster>.conf for its local cluster; the
            # cwd is the site dir, which holds <site>.conf.
            "rbd-mirror": spec(
                "rbd-mirror",
                ["/usr/bin/rbd-mirror", "-f", "-c", conf, "--id", self.mirror_user],
            ),
        }

    def running(self) -> dict[str, int | None]:
        """Give each daemon's PID if it runs (verified via /proc), else None."""
        return {name: procs.running_pid(spec) for name, spec in self.daemon_specs().items()}

    def conf_text(self) -> str:
        """Give the site's Ceph conf (daemons and client.admin share it)."""
        d = self.dir
        lo, hi = self.bind_ports
        # From 18.2 the OSD's default class dir is relative and finds no class (no
        # cls_rbd: every mirroring call fails with EOPNOTSUPP); see ceph_release.
        class_dir = ceph_release.osd_class_dir()
        osd_class_dir = f"osd_class_dir = {class_dir}\n" if class_dir else ""
        return f"""# pve-mirror two-site lab: {self.name} (generated; see tests/lab/ceph_lab.py)
[global]
fsid = {self.fsid}
mon_host = [{self.mon_host}]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_msgr1 = false
ms_bind_ipv6 = false
ms_bind_port_min = {lo}
ms_bind_port_max = {hi}
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
keyring = {self.admin_keyring}
run_dir = {d}/run
crash_dir = {d}/crash
log_file = {d}/log/$name.log
mon_cluster_log_file = {d}/log/cluster.log
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 2
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
paxos_propose_interval = 0.05
mgr_stats_period = 1
mgr_service_beacon_grace = 10

[mon]
mon_data = {d}/mon
keyring = {d}/mon/keyring

[mgr]
mgr_data = {d}/mgr
keyring = {d}/mgr/keyring
mgr_disabled_modules = {_lean_mgr_disabled_modules()}
mgr_initial_modules = rbd_support

[osd]
osd_data = {d}/osd
keyring = {d}/osd/keyring
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = {OSD_BLOCK_BYTES}
bluestore_fsck_on_mkfs = false
bluestore_fsck_on_mount = false
osd_memory_target = 939524096
{osd_class_dir}
[client.admin]
client_mount_timeout = {CLIENT_TIMEOUTS["client_mount_timeout"]}
rados_mon_op_timeout = {CLIENT_TIMEOUTS["rados_mon_op_timeout"]}
rados_osd_op_timeout = {CLIENT_TIMEOUTS["rados_osd_op_timeout"]}
log_file =

[client.{self.mirror_user}]
keyring = {self.keyring("client." + self.mirror_user)}
rbd_mirror_image_state_check_interval = 5
rbd_mirror_pool_replayers_refresh_interval = 5
rbd_mirror_delete_retry_interval = 5
"""


class CephLab:
    """The two-site lab under ``root`` (see the module docstring).

    ``up()`` builds and starts both sites (idempotent), ``down()`` stops every process
    the lab started and removes the cluster data (logs stay), ``reset()`` wipes the
    directory and brings a fresh lab up, ``status()`` reports health, mirroring and
    processes. ``stop_site``/``start_site`` stop one site keeping its data (a dead
    site); ``stop_mirror_daemon``/``start_mirror_daemon`` do that for rbd-mirror only.
    """

    def __init__(self, root: Path | None = None, port_base: int | None = None) -> None:
        if root is None:
            env_dir = os.environ.get(ENV_DIR)
            root = Path(env_dir) if env_dir else REPO_ROOT / ".lab"
        self.root = root.resolve()
        state = self._read_state()
        if port_base is None:
            env_port = os.environ.get(ENV_PORT_BASE)
            if env_port:
                port_base = int(env_port)
            elif isinstance(state.get("port_base"), int) and state.get("phase") == "up":
                # a running lab keeps its ports; a failed or downed one does not
                port_base = state["port_base"]
            else:
                port_base = DEFAULT_PORT_BASE
        self.port_base = port_base
        fsids = state.get("fsids", {}) if state.get("port_base") == port_base else {}
        self.sites: dict[str, CephSite] = {
            name: self._make_site(name, i + 1, str(fsids.get(name, "")))
            for i, name in enumerate(SITE_NAMES)
        }
        self._log_lock = threading.Lock()

    # -- layout ------------------------------------------------------------------------
    def _make_site(self, name: str, index: int, fsid: str) -> CephSite:
        site_dir = self.root / name
        base = self.port_base + 100 * index
        return CephSite(
            name=name,
            conf=site_dir / f"{name}.conf",
            admin_keyring=site_dir / "keyrings" / "client.admin.keyring",
            mon_host=f"v2:127.0.0.1:{base + 1}",
            fsid=fsid,
            pool=POOL,
            dir=site_dir,
            index=index,
            mon_port=base + 1,
            bind_ports=(base + 10, base + 99),
        )

    @property
    def state_file(self) -> Path:
        return self.root / "lab.json"

    @property
    def up_log(self) -> Path:
        return self.root / "up.log"

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads((self.root / "lab.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_state(self, phase: str) -> None:
        state = {
            "phase": phase,
            "port_base": self.port_base,
            "fsids": {name: site.fsid for name, site in self.sites.items()},
            "mon_hosts": {name: site.mon_host for name, site in self.sites.items()},
            "confs": {name: str(site.conf) for name, site in self.sites.items()},
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise up/down/reset of one lab dir across processes (bounded wait)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("w") as lock:

            def take() -> bool:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                return True

            wait_until(take, timeout=300, what=f"the lab lock {self.root}/.lock", interval=0.2)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _log(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        with self._log_lock, self.up_log.open("a") as out:
            out.write(line + "\n")

    # -- processes -----------------------------------------------------------------------
    def _recorded(self, sites: list[CephSite] | None = None) -> dict[int, tuple[str, str]]:
        """Give the recorded, verified lab PIDs plus strays naming our lab dir."""
        found: dict[int, tuple[str, str]] = {}
        for site in sites or list(self.sites.values()):
            for spec in site.daemon_specs().values():
                pid = procs.read_pid(spec.pid_file)
                if pid is not None and procs.is_ours(pid, spec.argv[0], spec.marker):
                    found[pid] = (spec.argv[0], spec.marker)
            if site.dir.exists():
                found.update(procs.find_strays(str(site.dir) + "/"))
        return found

    def processes(self) -> dict[str, dict[str, int | None]]:
        """Give ``{site: {daemon: pid or None}}`` for the lab's daemons."""
        return {name: site.running() for name, site in self.sites.items()}

    def rss_mib(self) -> float:
        """Give the total resident memory of all running lab daemons in MiB."""
        pids = [pid for daemons in self.processes().values() for pid in daemons.values() if pid]
        return sum(procs.rss_kib(pid) for pid in pids) / 1024

    def _stop(
        self, sites: list[CephSite] | None = None, timeout: float = procs.STOP_TIMEOUT
    ) -> list[str]:
        """Stop the sites' processes: rbd-mirror first, then mgr and OSD, then the mon.

        Clients shut down fast while their mon still answers; stopping them all at
        once makes each wait for a dead mon.
        """
        sites = sites or list(self.sites.values())
        notes: list[str] = []
        for tier in (("rbd-mirror",), ("mgr", "osd"), ("mon",)):
            pids: dict[int, tuple[str, str]] = {}
            for site in sites:
                for name, spec in site.daemon_specs().items():
                    pid = procs.running_pid(spec) if name in tier else None
                    if pid is not None:
                        pids[pid] = (spec.argv[0], spec.marker)
            notes += procs.stop_pids(pids, timeout)
        notes += procs.stop_pids(self._recorded(sites), timeout)  # strays of a crashed run
        return notes

    # -- up ----------------------------------------------------------------------------
    def is_up(self) -> bool:
        """Tell whether every lab daemon runs and both sites are healthy with mirroring."""
        if any(pid is None for d in self.processes().values() for pid in d.values()):
            return False
        try:
            return all(self._site_ready(site) for site in self.sites.values())
        except Exception:  # noqa: BLE001 - any failure to query means "not up"
            return False

    def up(self, timeout: float = UP_TIMEOUT) -> str:
        """Bring both sites up with two-way mirroring; give a one-line summary.

        If the lab already runs and is healthy, says so and changes nothing; stale
        state of a crashed run is stopped and wiped first. Raises LabError (after
        stopping what it started; logs stay under the lab dir) when a step fails.
        """
        check_prerequisites()
        with self._locked():
            if self._read_state().get("phase") == "up" and self.is_up():
                return f"lab already up and healthy at {self.root} ({self._ports_text()})"
            started = time.monotonic()
            self._wipe(keep_logs=False)
            self.root.mkdir(parents=True, exist_ok=True)
            self._log(
                f"up: building two-site lab in {self.root} ({self._ports_text()}), "
                f"Ceph {ceph_release.ceph_version()}"
            )
            try:
                self._build(deadline=started + timeout)
            except BaseException as exc:
                reason = self._failure_text(exc)
                self._log("up FAILED: " + reason)
                with contextlib.suppress(Exception):
                    self._stop(list(self.sites.values()))
                with contextlib.suppress(Exception):
                    self._write_state("failed")
                if isinstance(exc, Exception):
                    raise LabError(f"{reason}\n(full log: {self.up_log})") from exc
                raise
            elapsed = time.monotonic() - started
            self._write_state("up")
            summary = (
                f"lab up in {elapsed:.1f} s at {self.root} ({self._ports_text()}); "
                f"RSS of lab daemons {self.rss_mib():.0f} MiB"
            )
            self._log(summary)
            return summary

    def _ports_text(self) -> str:
        return ", ".join(f"{s.name} mon {s.mon_host}" for s in self.sites.values())

    def _failure_text(self, exc: BaseException) -> str:
        """Describe a failed up: the error and, for each dead daemon, its log tail."""
        parts = [f"lab up failed: {exc}"]
        for site in self.sites.values():
            for name, spec in site.daemon_specs().items():
                if not spec.pid_file.exists():
                    continue
                why = procs.exited_early(spec)
                if why:
                    parts.append(f"{site.name} {name} {why}; {self._log_tail(site, name)}")
        return "\n".join(parts)

    def _log_tail(self, site: CephSite, daemon: str, lines: int = 8) -> str:
        names = {"mon": f"mon.{MON_ID}", "mgr": f"mgr.{MGR_ID}", "osd": f"osd.{OSD_ID}"}
        log_name = names.get(daemon, f"client.{site.mirror_user}")
        tails = []
        for path in (site.log_dir / f"{log_name}.log", site.log_dir / f"{daemon}.out"):
            if path.exists():
                text = path.read_text(errors="replace").strip().splitlines()[-lines:]
                if text:
                    tails.append(f"tail of {path}:\n    " + "\n    ".join(text))
        return "\n".join(tails) or f"no log in {site.log_dir}"

    def _build(self, deadline: float) -> None:
        for site in self.sites.values():
            if not port_free(site.mon_port):
                raise LabError(
                    f"{site.name}: port {site.mon_port} is in use by another process; "
                    f"pick another port base ({ENV_PORT_BASE})"
                )
            site.fsid = str(uuid.uuid4())
        self._write_state("starting")
        errors: dict[str, BaseException] = {}

        def build_site(site: CephSite) -> None:
            try:
                self._build_site(site, deadline)
            except BaseException as exc:  # noqa: BLE001 - reported by the caller
                errors[site.name] = exc

        threads = [
            threading.Thread(target=build_site, args=(s,), name=s.name) for s in self.sites.values()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(1.0, deadline - time.monotonic() + 5))
        if any(t.is_alive() for t in threads):
            raise LabError("building the sites did not finish before the deadline")
        if errors:
            name, exc = next(iter(errors.items()))
            raise LabError(f"{name}: {exc}") from exc
        self._pair_sites()
        for site in self.sites.values():
            self._log(f"{site.name}: starting rbd-mirror")
            procs.start(site.daemon_specs()["rbd-mirror"])
        for site in self.sites.values():
            self._wait_site_ready(site, deadline)
        self._log("up: both sites healthy, both rbd-mirror daemons report OK")

    def _remaining(self, deadline: float) -> float:
        return max(1.0, deadline - time.monotonic())

    def _wait_alive(self, site: CephSite, daemons: list[str]) -> None:
        specs = site.daemon_specs()
        for name in daemons:
            why = procs.exited_early(specs[name])
            if why:
                raise LabError(f"{site.name} {name} {why}; {self._log_tail(site, name)}")

    def _build_site(self, site: CephSite, deadline: float) -> None:
        """Create and start one site's mon, mgr and OSD, its pool and mirror mode."""
        d = site.dir
        for sub in ("keyrings", "mon", "mgr", "osd", "log", "run", "pids", "crash"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        keys = {
            "mon.": _cephx_key(),
            "client.admin": _cephx_key(),
            f"mgr.{MGR_ID}": _cephx_key(),
            f"client.{site.mirror_user}": _cephx_key(),
        }
        caps = {
            "mon.": {"mon": "allow *"},
            "client.admin": {
                "mon": "allow *",
                "osd": "allow *",
                "mgr": "allow *",
                "mds": "allow *",
            },
            f"mgr.{MGR_ID}": {"mon": "allow profile mgr", "osd": "allow *", "mds": "allow *"},
            # gotcha 7: the documented caps of an rbd-mirror daemon user.
            f"client.{site.mirror_user}": {"mon": "profile rbd-mirror", "osd": "profile rbd"},
        }
        site.conf.write_text(site.conf_text())
        ceph_release.write_mgr_python(site.mgr_python_dir)
        # All keys and caps go into the mon's initial keyring: one mkfs instead of
        # several auth round trips.
        mon_keyring = d / "keyrings" / "mon-initial.keyring"
        _write_private(mon_keyring, "".join(_keyring_entry(e, k, caps[e]) for e, k in keys.items()))
        admin = "client.admin"
        _write_private(site.admin_keyring, _keyring_entry(admin, keys[admin], caps[admin]))
        mgr = f"mgr.{MGR_ID}"
        _write_private(d / "mgr" / "keyring", _keyring_entry(mgr, keys[mgr], {}))
        mirror = f"client.{site.mirror_user}"
        _write_private(site.keyring(mirror), _keyring_entry(mirror, keys[mirror], {}))

        # The OSD mkfs needs no mon with --no-mon-config: run it beside the mon setup.
        osd_uuid = str(uuid.uuid4())
        osd_mkfs = subprocess.Popen(
            [
                "/usr/bin/ceph-osd",
                "-c",
                str(site.conf),
                "-i",
                str(OSD_ID),
                "--mkfs",
                "--no-mon-config",
                "--osd-uuid",
                osd_uuid,
            ],
            stdin=subprocess.DEVNULL,
            stdout=(site.log_dir / "osd-mkfs.out").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            monmap = d / "run" / "monmap"
            self._run(
                site,
                "monmaptool",
                [
                    "/usr/bin/monmaptool",
                    "--create",
                    "--fsid",
                    site.fsid,
                    "--addv",
                    MON_ID,
                    f"[{site.mon_host}]",
                    str(monmap),
                ],
            )
            self._run(
                site,
                "mon mkfs",
                [
                    "/usr/bin/ceph-mon",
                    "-c",
                    str(site.conf),
                    "--mkfs",
                    "-i",
                    MON_ID,
                    "--monmap",
                    str(monmap),
                    "--keyring",
                    str(mon_keyring),
                ],
            )
            mon_keyring.unlink()
            specs = site.daemon_specs()
            self._log(f"{site.name}: starting mon on {site.mon_host}")
            procs.start(specs["mon"])
            with self._connect(site, deadline) as cluster:
                # gotcha 10: the lean mgr's missing always-on modules raise
                # MGR_MODULE_ERROR, which does not block IO: mute it.
                self._mon_cmd(
                    cluster, {"prefix": "health mute", "code": "MGR_MODULE_ERROR", "sticky": True}
                )
                self._log(f"{site.name}: starting mgr")
                procs.start(specs["mgr"])
                osd_key = _cephx_key()
                # gotcha 2: register the OSD (id and cephx key) the way ceph-volume does.
                self._mon_cmd(
                    cluster,
                    {"prefix": "osd new", "uuid": osd_uuid, "id": OSD_ID},
                    inbuf=json.dumps({"cephx_secret": osd_key}).encode(),
                )
                _write_private(d / "osd" / "keyring", _keyring_entry(f"osd.{OSD_ID}", osd_key, {}))
                self._mon_cmd(
                    cluster, {"prefix": "osd pool create", "pool": site.pool, "pg_num": 8}
                )
                self._mon_cmd(
                    cluster,
                    {
                        "prefix": "osd pool set",
                        "pool": site.pool,
                        "var": "size",
                        "val": "1",
                        "yes_i_really_mean_it": True,
                    },
                )
                self._mon_cmd(
                    cluster,
                    {"prefix": "osd pool application enable", "pool": site.pool, "app": "rbd"},
                )
                code = osd_mkfs.wait(timeout=self._remaining(deadline))
                if code != 0:
                    tail = (site.log_dir / "osd-mkfs.out").read_text(errors="replace")[-800:]
                    raise LabError(f"OSD mkfs failed ({code}): {tail}")
                self._log(f"{site.name}: starting osd")
                procs.start(specs["osd"])
                self._wait_io(site, cluster, deadline)
                self._enable_mirroring(site, cluster)
        finally:
            if osd_mkfs.poll() is None:
                osd_mkfs.kill()
            osd_mkfs.wait(timeout=10)

    def _run(self, site: CephSite, what: str, argv: list[str]) -> None:
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=CLI_TIMEOUT,
                check=False,
                env=dict(os.environ, LC_ALL="C"),
            )
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"{site.name}: {what} timed out") from exc
        if proc.returncode != 0:
            raise LabError(f"{site.name}: {what} failed: {(proc.stderr or proc.stdout)[-800:]}")

    @contextlib.contextmanager
    def _connect(self, site: CephSite, deadline: float) -> Iterator[Any]:
        """Give a rados connection to a just-started mon, retrying until ``deadline``."""
        import rados

        box: list[Any] = []

        def attempt() -> bool:
            self._wait_alive(site, ["mon"])
            cluster = rados.Rados(
                conffile=str(site.conf),
                rados_id="admin",
                conf={**site.rados_conf(), "client_mount_timeout": "3"},
            )
            try:
                cluster.connect(timeout=3)
            except rados.Error:
                cluster.shutdown()
                raise
            box.append(cluster)
            return True

        wait_until(
            attempt,
            timeout=self._remaining(deadline),
            what=f"{site.name} mon to accept clients",
            retry_on=(rados.Error,),
        )
        try:
            yield box[0]
        finally:
            box[0].shutdown()

    def _mon_cmd(self, cluster: Any, cmd: dict[str, Any], inbuf: bytes = b"") -> str:
        """Run a mon command; give its output. Raises LabError on a non-zero status."""
        ret, out, err = cluster.mon_command(json.dumps(cmd), inbuf, timeout=30)
        if ret != 0:
            raise LabError(f"mon command {cmd['prefix']!r} failed ({ret}): {err}")
        return out.decode() if isinstance(out, bytes) else str(out)

    def _status_json(self, cluster: Any) -> dict[str, Any]:
        data = json.loads(self._mon_cmd(cluster, {"prefix": "status", "format": "json"}))
        return data if isinstance(data, dict) else {}

    def _io_ready(self, status: dict[str, Any]) -> bool:
        """Tell from ``ceph status`` JSON whether the OSD is up and all PGs active."""
        osdmap = status.get("osdmap", {})
        osdmap = osdmap.get("osdmap", osdmap)  # the nesting differs between releases
        pgmap = status.get("pgmap", {})
        num_pgs = int(pgmap.get("num_pgs", 0))
        active = sum(
            int(s.get("count", 0))
            for s in pgmap.get("pgs_by_state", [])
            if str(s.get("state_name", "")).startswith("active")
        )
        return int(osdmap.get("num_up_osds", 0)) >= 1 and num_pgs > 0 and active == num_pgs

    def _wait_io(self, site: CephSite, cluster: Any, deadline: float) -> None:
        def ready() -> bool:
            self._wait_alive(site, ["mon", "mgr", "osd"])
            return self._io_ready(self._status_json(cluster))

        wait_until(
            ready,
            timeout=self._remaining(deadline),
            what=f"{site.name}: OSD up and all PGs active",
            interval=0.2,
            max_interval=0.3,
        )
        self._log(f"{site.name}: OSD up, PGs active")

    def _enable_mirroring(self, site: CephSite, cluster: Any) -> None:
        import rbd

        ioctx = cluster.open_ioctx(site.pool)
        try:
            rbd.RBD().pool_init(ioctx, True)
            rbd.RBD().mirror_mode_set(ioctx, rbd.RBD_MIRROR_MODE_IMAGE)
            rbd.RBD().mirror_site_name_set(cluster, site.name)
        finally:
            ioctx.close()
        self._log(f"{site.name}: pool {site.pool} mirror mode image, site name {site.name}")

    def _pair_sites(self) -> None:
        """Peer the sites two-way (rx-tx) with a bootstrap token made on site-a."""
        import rbd

        a, b = self.sites["site-a"], self.sites["site-b"]
        with a.ioctx() as ioctx_a:
            token = rbd.RBD().mirror_peer_bootstrap_create(ioctx_a)
        with b.ioctx() as ioctx_b:
            rbd.RBD().mirror_peer_bootstrap_import(
                ioctx_b, rbd.RBD_MIRROR_PEER_DIRECTION_RX_TX, token
            )
        self._log("sites paired (bootstrap token from site-a imported rx-tx on site-b)")

    # -- readiness ---------------------------------------------------------------------
    def mirror_pool_status(self, site: CephSite) -> dict[str, Any]:
        """Give ``rbd mirror pool status --verbose`` JSON of a site (daemon health etc.)."""
        out = site.cli(
            "rbd",
            "mirror",
            "pool",
            "status",
            site.pool,
            "--verbose",
            "--format",
            "json",
            timeout=30,
        )
        data = json.loads(out)
        return data if isinstance(data, dict) else {}

    def daemon_health(self, name: str) -> str:
        """Give the rbd-mirror daemon health of a site as its pool status shows it."""
        summary = self.mirror_pool_status(self.sites[name]).get("summary", {})
        return str(summary.get("daemon_health", "UNKNOWN"))

    def _site_ready(self, site: CephSite) -> bool:
        with site.rados(connect_timeout=5) as cluster:
            if not self._io_ready(self._status_json(cluster)):
                return False
            if not self._rbd_support_ready(site, cluster):
                return False
        return self.daemon_health(site.name) == "OK"

    def _rbd_support_ready(self, site: CephSite, cluster: Any) -> bool:
        """Tell whether the mgr's rbd_support answers (snapshot schedules need it).

        Raises LabError when the mgr's health says it failed to load (on 18.2.7 without
        the bcrypt stand-in: MGR_MODULE_DEPENDENCY, see ceph_release), which the lean
        mgr's muted module errors would otherwise hide.
        """
        cmd = {"prefix": "rbd mirror snapshot schedule list", "level_spec": f"{site.pool}/"}
        ret, _out, _err = cluster.mgr_command(json.dumps(cmd), b"", timeout=10)
        if ret == 0:
            return True
        health = json.loads(
            self._mon_cmd(cluster, {"prefix": "health", "detail": "detail", "format": "json"})
        )
        # MGR_MODULE_DEPENDENCY ("has failed dependency") or MGR_MODULE_ERROR
        for check in health.get("checks", {}).values():
            for item in check.get("detail", []):
                message = str(item.get("message", ""))
                if "rbd_support" in message:
                    raise LabError(f"{site.name}: ceph-mgr cannot load rbd_support: {message}")
        return False

    def _wait_site_ready(self, site: CephSite, deadline: float) -> None:
        def ready() -> bool:
            self._wait_alive(site, ["mon", "mgr", "osd", "rbd-mirror"])
            return self._site_ready(site)

        import rados

        wait_until(
            ready,
            timeout=self._remaining(deadline),
            what=f"{site.name}: IO possible and rbd-mirror daemon health OK",
            interval=0.2,
            max_interval=0.3,
            retry_on=(rados.Error, LabError),
        )
        self._log(f"{site.name}: ready (daemon health OK)")

    # -- down / reset --------------------------------------------------------------------
    def down(self) -> str:
        """Stop every process of the lab and remove its cluster data; give a summary.

        Logs stay under the lab dir. Raises LabError if a process survives SIGKILL.
        """
        with self._locked():
            found = self._recorded()
            try:
                notes = self._stop()
            except RuntimeError as exc:
                raise LabError(str(exc)) from exc
            self._wipe(keep_logs=True)
            if self.root.exists():
                self._write_state("down")
            text = f"lab down: stopped {len(found)} processes" if found else "lab down (was not up)"
            return "; ".join([text, *notes])

    def _wipe(self, keep_logs: bool) -> None:
        """Stop leftovers and delete cluster data (and the logs unless ``keep_logs``)."""
        # Leftovers of a crashed run often lost their mon and hang in a clean
        # shutdown; their data is deleted anyway, so they get a short SIGTERM grace.
        self._stop(timeout=3.0)
        # the PVE side's /etc/pve (pmxcfs) goes with the clusters its configs point to
        from tests.lab import pmxcfs

        pmxcfs.wipe_all(self.root)
        for site in self.sites.values():
            if not site.dir.exists():
                continue
            for child in site.dir.iterdir():
                if keep_logs and child.name == "log":
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        if not keep_logs and self.up_log.exists():
            self.up_log.unlink()

    def reset(self) -> str:
        """Tear the lab down, wipe its directory (logs too) and bring a fresh one up."""
        self.down()
        with self._locked():
            self._wipe(keep_logs=False)
            with contextlib.suppress(FileNotFoundError):
                self.state_file.unlink()
        return self.up()

    # -- one site down / one daemon down -------------------------------------------------
    def stop_site(self, name: str, freeze: bool = False) -> None:
        """Take one site down, keeping its data (its OSD is bluestore on a file).

        By default its mon, mgr, OSD and rbd-mirror are stopped (SIGTERM, then
        SIGKILL): clients get connection refused and time out. With ``freeze`` they
        are SIGSTOPped instead: connections hang until the client timeouts.
        """
        site = self.sites[name]
        if freeze:
            for dname, spec in site.daemon_specs().items():
                pid = procs.running_pid(spec)
                if pid is None:
                    raise LabError(f"{name} {dname} is not running; cannot freeze it")
                procs.freeze(pid, spec.argv[0], spec.marker)
            return
        self._stop([site])

    def start_site(self, name: str, timeout: float = UP_TIMEOUT) -> None:
        """Start (or thaw) one site's daemons from its kept data; wait until it is ready.

        Raises LabError or WaitTimeoutError if the site does not come back healthy.
        """
        site = self.sites[name]
        deadline = time.monotonic() + timeout
        specs = site.daemon_specs()
        frozen = False
        for spec in specs.values():
            pid = procs.running_pid(spec)
            if pid is not None:
                frozen = True
                procs.thaw(pid, spec.argv[0], spec.marker)
        if not frozen:
            # rbd-mirror last, once IO works: started beside a booting OSD it reports
            # ERROR, then WARNING for a refresh interval before it settles.
            for daemon in ("mon", "mgr", "osd"):
                if procs.running_pid(specs[daemon]) is None:
                    procs.start(specs[daemon])
            with self._connect(site, deadline) as cluster:
                self._wait_io(site, cluster, deadline)
        if procs.running_pid(specs["rbd-mirror"]) is None:
            procs.start(specs["rbd-mirror"])
        self._wait_site_ready(site, deadline)

    def stop_mirror_daemon(self, name: str) -> None:
        """Stop the rbd-mirror daemon of site ``name`` (SIGTERM, bounded)."""
        spec = self.sites[name].daemon_specs()["rbd-mirror"]
        pid = procs.running_pid(spec)
        if pid is not None:
            procs.stop_pids({pid: (spec.argv[0], spec.marker)})

    def start_mirror_daemon(self, name: str, timeout: float = UP_TIMEOUT) -> None:
        """Start the rbd-mirror daemon of site ``name``; wait until its health is OK."""
        site = self.sites[name]
        spec = site.daemon_specs()["rbd-mirror"]
        if procs.running_pid(spec) is None:
            procs.start(spec)
        self._wait_site_ready(site, time.monotonic() + timeout)

    # -- status ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Give the lab's state: per site processes (PID, RSS), health, mirroring, peers.

        Queries only sites whose mon runs, with short timeouts; errors are reported
        in the dict, not raised.
        """
        import rbd

        result: dict[str, Any] = {
            "root": str(self.root),
            "port_base": self.port_base,
            "phase": self._read_state().get("phase", "absent"),
            "sites": {},
        }
        total_kib = 0
        all_ok = True
        for name, site in self.sites.items():
            running = site.running()
            info: dict[str, Any] = {
                "mon_host": site.mon_host,
                "conf": str(site.conf),
                "fsid": site.fsid,
                "processes": {
                    d: (
                        {"pid": pid, "rss_mib": round(procs.rss_kib(pid) / 1024, 1)}
                        if pid
                        else None
                    )
                    for d, pid in running.items()
                },
            }
            total_kib += sum(procs.rss_kib(pid) for pid in running.values() if pid)
            if running["mon"] is None:
                info["error"] = "mon not running"
                all_ok = False
                result["sites"][name] = info
                continue
            try:
                with site.rados(connect_timeout=5) as cluster:
                    st = self._status_json(cluster)
                    health = st.get("health", {})
                    info["health"] = health.get("status", "UNKNOWN")
                    info["health_checks"] = sorted(health.get("checks", {}))
                    info["muted"] = sorted(m.get("code", "") for m in health.get("mutes", []))
                    info["io_ready"] = self._io_ready(st)
                    ioctx = cluster.open_ioctx(site.pool)
                    try:
                        mode = rbd.RBD().mirror_mode_get(ioctx)
                        info["mirror_mode"] = {
                            rbd.RBD_MIRROR_MODE_DISABLED: "disabled",
                            rbd.RBD_MIRROR_MODE_IMAGE: "image",
                            rbd.RBD_MIRROR_MODE_POOL: "pool",
                        }.get(mode, str(mode))
                        info["site_name"] = rbd.RBD().mirror_site_name_get(cluster)
                        info["peers"] = [
                            {
                                "site_name": p.get("site_name"),
                                "direction": {
                                    rbd.RBD_MIRROR_PEER_DIRECTION_RX: "rx-only",
                                    rbd.RBD_MIRROR_PEER_DIRECTION_TX: "tx-only",
                                    rbd.RBD_MIRROR_PEER_DIRECTION_RX_TX: "rx-tx",
                                }.get(p.get("direction"), str(p.get("direction"))),
                                "uuid": p.get("uuid"),
                            }
                            for p in rbd.RBD().mirror_peer_list(ioctx)
                        ]
                    finally:
                        ioctx.close()
                pool_status = self.mirror_pool_status(site)
                summary = pool_status.get("summary", {})
                info["mirror_health"] = summary.get("health")
                info["daemon_health"] = summary.get("daemon_health")
                info["image_health"] = summary.get("image_health")
                info["images"] = summary.get("states", {})
                info["daemons"] = [
                    {
                        "service_id": dmn.get("service_id"),
                        "health": dmn.get("health"),
                        "leader": dmn.get("leader"),
                    }
                    for dmn in pool_status.get("daemons", [])
                ]
            except Exception as exc:  # noqa: BLE001 - status reports, never raises
                info["error"] = str(exc) or type(exc).__name__
            ok = (
                "error" not in info
                and all(running.values())
                and info.get("io_ready")
                and info.get("health") != "HEALTH_ERR"
                and info.get("daemon_health") == "OK"
            )
            info["ok"] = bool(ok)
            all_ok = all_ok and bool(ok)
            result["sites"][name] = info
        result["rss_mib_total"] = round(total_kib / 1024, 1)
        result["healthy"] = all_ok
        return result


__all__ = [
    "POOL",
    "SITE_NAMES",
    "CephLab",
    "CephSite",
    "LabError",
    "WaitTimeoutError",
    "check_prerequisites",
]
