"""pve-mirror on the real pmxcfs (Proxmox's cluster file system), no Ceph needed.

Each file system here is a real pmxcfs (tests/lab/pmxcfs.py builds it from
../shared). It refuses what a plain directory allows: modes other than 0640 (0600
under priv/), files past 1 MiB, renaming a directory that holds files, a VMID twice,
and every write without quorum. Proven here: ``pve-mirror sync`` into it with the
product's own rsync command (over the lab sshd, the receiving shell under umask 077);
the take-over of a stale lock, also by racing processes; a journal of 300 guests
staying far below 1 MiB per file, and a killed run continuing where it stopped;
a read-only /etc/pve (pmxcfs without quorum: EACCES; a read-only bind mount: EROFS)
giving one line and a non-zero exit; modes and VMIDs as pmxcfs enforces them.

Under CI these tests fail when ../shared is missing; elsewhere they skip.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pve_mirror.actions.staging import StagedGuest
from pve_mirror.actions.staging_install import install_staged
from pve_mirror.engine import journal as journal_module
from pve_mirror.engine.execute_plan import DONE, execute_plan, run_journalled
from pve_mirror.engine.journal import Journal
from pve_mirror.engine.lock import cluster_lock
from pve_mirror.engine.plan import Plan, Step, step
from pve_mirror.errors import FileSystemError, LockedError, PolicyError
from pve_mirror.files import write_atomic
from pve_mirror.pve.guestconfig import GuestConfig
from pve_mirror.pve.siteconfig import GuestEntry, load_site_config
from tests.lab import pmxcfs, sshd
from tests.lab.wait import wait_until
from tests.unit.pvetree import VM_100, build_tree

REPO = Path(__file__).resolve().parents[2]
# One directory per test session: several sessions (engineers, CI) may run at once.
BASE = Path(os.environ.get("PVE_MIRROR_PMXCFS_DIR", "/tmp/pmxcfs-helper3")) / str(os.getpid())
NODE = "pve-b1"
STORAGE_CFG = "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup\n"
MIB = 1024 * 1024


def _require_pmxcfs() -> None:
    if pmxcfs.available():
        return
    why = f"real pmxcfs needs {pmxcfs.THIRD_PARTY} (../shared)"
    if pmxcfs.under_ci():
        pytest.fail(f"{why}; CI must run these tests", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module", autouse=True)
def _base() -> Iterator[None]:
    """Remove this session's directory when the module is done (pmxcfs wiped first)."""
    yield
    for mount in ("site-b/etc-pve", "no-quorum/etc-pve", "read-only-view"):
        if os.path.ismount(BASE / mount):
            return  # never delete under a live mount
    shutil.rmtree(BASE, ignore_errors=True)


@pytest.fixture(scope="module")
def pvefs() -> Iterator[pmxcfs.PveFs]:
    """Give one running pmxcfs (node pve-b1) for the module; wiped at the end."""
    _require_pmxcfs()
    fs = pmxcfs.PveFs(BASE / "site-b", NODE)
    try:
        fs.start()
        assert fs.real
        yield fs
    finally:
        fs.wipe()


@pytest.fixture
def etc_pve(pvefs: pmxcfs.PveFs) -> Path:
    """Give the pmxcfs mount point with no pve-mirror state and no guests."""
    root = pvefs.mount
    shutil.rmtree(root / "pve-mirror", ignore_errors=True)
    for conf in root.glob("nodes/*/*/*.conf"):
        conf.unlink()
    (root / "storage.cfg").write_text(STORAGE_CFG)
    return root


# --- sync: pve-mirror's own rsync command into pmxcfs ------------------------------


@pytest.fixture(scope="module")
def endpoint() -> Iterator[sshd.SshEndpoint]:
    """The lab sshd as the peer node. Started under umask 077, as a hardened root
    login may be: the receiving rsync then masks every mode it wants to 0600/0700."""
    lab_dir = BASE / "sshd"
    old = os.umask(0o077)
    try:
        endpoint = sshd.start(lab_dir)
    finally:
        os.umask(old)
    yield endpoint
    sshd.stop(lab_dir)


def _site_a(a: Path, endpoint: sshd.SshEndpoint, peer_root: Path) -> None:
    build_tree(a)
    cfg = load_site_config(a, required=False)
    cfg.set_section("site", "site-a", {"peer": "site-b"})
    peer = {"ssh": endpoint.target, "ssh-port": str(endpoint.port), "root": str(peer_root)}
    cfg.set_section("peer", "site-b", {**peer, "node": NODE})
    for kind, vmid in (("qemu", 100), ("lxc", 200), ("qemu", 101)):
        cfg.set_guest(GuestEntry(kind, vmid, enabled=True))  # type: ignore[arg-type]
    cfg.save()
    priv = a / "priv" / "pve-mirror"
    priv.mkdir(parents=True, exist_ok=True)
    shutil.copy(endpoint.key_path, priv / "site-b.ssh_key")
    (priv / "site-b.ssh_key").chmod(0o600)
    shutil.copy(endpoint.known_hosts, priv / "site-b.known_hosts")


def _sync(a: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pve_mirror", "--root", str(a), "sync", "--output-format", "json"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip


def test_sync_into_pmxcfs_first_update_and_no_change(
    etc_pve: Path, endpoint: sshd.SshEndpoint, tmp_path: Path
) -> None:
    a = tmp_path / "site-a"
    _site_a(a, endpoint, etc_pve)
    staging = etc_pve / "pve-mirror" / "staging" / "site-a"

    first = _sync(a)
    assert first.returncode == 0, first.stderr
    files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    configs = ["lxc/200.conf", "qemu-server/100.conf", "qemu-server/101.conf"]
    assert files == sorted([*configs, "manifest.json"])
    for path in staging.rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o640), path
    manifest = json.loads((staging / "manifest.json").read_text())
    sent = (staging / "qemu-server/101.conf").read_bytes()
    assert manifest["files"]["qemu-server/101.conf"]["sha256"] == hashlib.sha256(sent).hexdigest()
    assert sent == (a / "nodes/pve2/qemu-server/101.conf").read_bytes()

    # an update: one config changed, one guest dropped (deleted at the peer)
    changed_vm = VM_100.replace("memory: 4096", "memory: 6144")
    (a / "nodes/pve1/qemu-server/100.conf").write_text(changed_vm)
    cfg = load_site_config(a)
    cfg.remove_guest("lxc", 200)
    cfg.save()
    update = _sync(a)
    assert update.returncode == 0, update.stderr
    changed = sorted(json.loads(update.stdout)["changed"])
    assert changed == ["lxc/200.conf", "manifest.json", "qemu-server/100.conf"]
    assert not (staging / "lxc/200.conf").exists()
    assert b"memory: 6144" in (staging / "qemu-server/100.conf").read_bytes()

    # nothing changed: at most the manifest (its sync time, in seconds) is sent again
    again = _sync(a)
    assert again.returncode == 0, again.stderr
    assert set(json.loads(again.stdout)["changed"]) <= {"manifest.json"}
    assert not [p for p in staging.rglob(".*")], "no temporary file left behind"


# --- the cluster lock -------------------------------------------------------------


def _dead_pid() -> int:
    proc = multiprocessing.Process(target=os._exit, args=(0,))
    proc.start()
    proc.join()
    assert proc.pid is not None
    return proc.pid


def _stale_lock(root: Path) -> Path:
    lock_dir = root / "pve-mirror" / "lock"
    lock_dir.mkdir(parents=True)
    owner = {"command": "failover", "pid": _dead_pid(), "host": socket.gethostname(), "at": 1.0}
    (lock_dir / "owner").write_text(json.dumps(owner))
    return lock_dir


def test_stale_lock_is_taken_over_on_pmxcfs(etc_pve: Path) -> None:
    lock_dir = _stale_lock(etc_pve)
    with pytest.raises(OSError, match="Directory not empty"):
        os.rename(lock_dir, lock_dir.with_name("aside"))  # why it is taken over in place
    with cluster_lock(etc_pve, "rerun"):
        assert json.loads((lock_dir / "owner").read_text())["command"] == "rerun"
        assert os.listdir(lock_dir) == ["owner"]
    assert not lock_dir.exists()


def _take(root: str, go: Any, attempted: Any, results: Any, count: int) -> None:
    go.wait(30)
    try:
        with cluster_lock(Path(root), "taker"):
            results.put("won")
            with attempted.get_lock():
                attempted.value += 1
            # Hold the lock until every other taker has tried.
            deadline = time.monotonic() + 60
            while attempted.value < count and time.monotonic() < deadline:
                time.sleep(0.01)
    except LockedError as exc:
        results.put(f"locked: {exc}")
        with attempted.get_lock():
            attempted.value += 1


def test_of_racing_takers_on_pmxcfs_exactly_one_wins(etc_pve: Path) -> None:
    lock_dir = _stale_lock(etc_pve)
    go = multiprocessing.Event()
    attempted = multiprocessing.Value("i", 0)
    results: multiprocessing.Queue[str] = multiprocessing.Queue()
    count = 6
    args = (str(etc_pve), go, attempted, results, count)
    procs = [multiprocessing.Process(target=_take, args=args) for _ in range(count)]
    for proc in procs:
        proc.start()
    go.set()
    for proc in procs:
        proc.join(90)
    got = [results.get(timeout=5) for _ in range(count)]
    assert got.count("won") == 1, got
    assert all(g.startswith("locked: locked by ") for g in got if g != "won"), got
    assert not lock_dir.exists()


# --- the journal: far below 1 MiB per file, and a rerun continues -------------------


def _plan(guests: int) -> Plan:
    """A failover-like plan: per guest 2 disks, 17 steps."""
    plan = Plan("failover", f"failover of {guests} guests")
    kinds = ("final-snapshot", "wait-copied", "demote", "wait-demoted", "promote", "schedule")
    for n in range(guests):
        vmid = 1000 + n
        g = f"vm:{vmid}"
        plan.add(step("stop-source", 1, g, g, f"shut down {g}"))
        for disk in range(2):
            img = f"rbd/vm-{vmid}-disk-{disk}"
            for phase, kind in enumerate(kinds, start=2):
                plan.add(step(kind, phase, img, g, f"{kind} {img}", image=img))
        for phase, kind in enumerate(("set-aside", "install-config", "record", "start"), start=8):
            plan.add(step(kind, phase, g, g, f"{kind} {g}", node=NODE))
    return plan


def _detail(item: Step) -> str:
    if item.kind == "install-config":
        return f"installed /etc/pve/nodes/{NODE}/qemu-server/{item.group[3:]}.conf"
    if item.kind == "stop-source":
        return "stopped (UPID:pve-a1:0001F2A3:00B1C2D3:65A1B2C3:qmshutdown:1000:root@pam:)"
    return "done in 0.4 s"


def _functions(plan: Plan, calls: list[str] | None = None) -> dict[str, Any]:
    def work(item: Step) -> str:
        if calls is not None:
            calls.append(item.id)
        return _detail(item)

    return {s.kind: work for s in plan.steps}


def test_journal_of_300_guests_stays_far_below_1_mib_on_pmxcfs(etc_pve: Path) -> None:
    plan = _plan(300)
    outcomes = run_journalled(etc_pve, plan, _functions(plan), concurrency=8)
    assert {o.status for o in outcomes} == {DONE}
    files = list((etc_pve / "pve-mirror" / "journal").iterdir())
    sizes = [p.stat().st_size for p in files]
    print(f"\n300 guests, {len(plan.steps)} steps: {len(sizes)} files, largest {max(sizes)} B, "
          f"{sum(sizes) / 300:.0f} B per guest")  # fmt: skip
    assert max(sizes) <= MIB // 8
    assert sum(sizes) / 300 < 2100  # 3.6 KB before
    assert all(p.suffix == journal_module.FINISHED for p in files)  # nothing left to continue


CRASH = """
import os, signal, sys
from pathlib import Path
from tests.integration import test_pmxcfs as t
from pve_mirror.engine.execute_plan import run_journalled

plan, calls = t._plan(int(sys.argv[2])), []
functions = t._functions(plan, calls)
def die_at(item):
    if len(calls) == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)
    return functions[item.kind](item)
run_journalled(Path(sys.argv[1]), plan, {k: die_at for k in functions}, concurrency=1)
"""


def test_a_killed_run_continues_on_pmxcfs_after_taking_over_its_lock(etc_pve: Path) -> None:
    guests, kill_at = 80, 1000
    plan = _plan(guests)
    killed = subprocess.run(
        [sys.executable, "-c", CRASH, str(etc_pve), str(guests), str(kill_at)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    lock_dir = etc_pve / "pve-mirror" / "lock"
    assert (lock_dir / "owner").exists(), "the killed run leaves its lock"
    journal = Journal(etc_pve / "pve-mirror" / "journal", plan.action, plan.fingerprint())
    assert len(journal.segments()) > 1
    recorded = set(journal.done_steps())
    assert len(recorded) == kill_at
    calls: list[str] = []
    notes: list[str] = []
    outcomes = run_journalled(
        etc_pve, plan, _functions(plan, calls), concurrency=4, progress=notes.append
    )
    assert any("continuing the unfinished run" in n for n in notes)
    assert {o.status for o in outcomes} <= {DONE, "already-done"}
    assert sorted(calls) == sorted(s.id for s in plan.steps if s.id not in recorded)
    assert not lock_dir.exists()


# --- a read-only /etc/pve: one line, non-zero exit ------------------------------------

COROSYNC_CONF = f"""\
totem {{
  cluster_name: lab
  version: 2
}}
nodelist {{
  node {{
    name: {NODE}
    nodeid: 1
    quorum_votes: 1
    ring0_addr: 127.0.0.1
  }}
}}
quorum {{
  provider: corosync_votequorum
}}
"""


def _start_without_quorum(fs: pmxcfs.PveFs) -> subprocess.Popen[bytes]:
    """Restart ``fs`` as a cluster node whose corosync does not run: the real no-quorum
    state, where pmxcfs answers every write with EACCES.

    run.sh always starts local mode (``-l``, quorate), so pmxcfs is started here the
    way run.sh does it but without ``-l``. Its PID goes to ``<base>/pid`` so that
    ``fs.wipe()`` stops exactly it.
    """
    (fs.mount / "corosync.conf").write_text(COROSYNC_CONF)
    fs.stop()
    base = fs.base.resolve()
    ipc = "pmxcfs-" + hashlib.sha1(str(base).encode()).hexdigest()[:12]  # as run.sh does
    env = dict(
        os.environ,
        PMXCFS_MOUNTPOINT=str(base / "etc-pve"),
        PMXCFS_VARLIBDIR=str(base / "var-lib"),
        PMXCFS_RUNDIR=str(base / "run"),
        PMXCFS_PIDFILE=str(base / "run" / "pmxcfs.pid"),
        PMXCFS_NODENAME=fs.node,
        PMXCFS_NODEIP="127.0.0.1",
        PMXCFS_IPC_NAME=ipc,
    )
    with (base / "pmxcfs.log").open("ab") as log:
        proc = subprocess.Popen(
            [str(pmxcfs.BINARY), "-f"], env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    (base / "pid").write_text(f"{proc.pid}\n")

    def up() -> bool:
        assert proc.poll() is None, "pmxcfs exited; see " + str(base / "pmxcfs.log")
        return fs.real and (fs.mount / ".version").exists()

    wait_until(up, timeout=30, what="pmxcfs without quorum to mount")
    return proc


@pytest.fixture(scope="module")
def no_quorum() -> Iterator[Path]:
    """Give the mount point of a pmxcfs without quorum (storage.cfg written before)."""
    _require_pmxcfs()
    fs = pmxcfs.PveFs(BASE / "no-quorum", NODE)
    proc = None
    try:
        fs.start()
        (fs.mount / "storage.cfg").write_text(STORAGE_CFG)
        proc = _start_without_quorum(fs)
        with pytest.raises(PermissionError):
            (fs.mount / "probe").write_text("")
        yield fs.mount
    finally:
        if proc is not None and proc.poll() is None:
            # Waiting for corosync, it takes 10 s to heed SIGTERM; its data is thrown away.
            proc.kill()
            proc.wait(30)
        fs.wipe()


@pytest.fixture
def read_only_bind(etc_pve: Path) -> Iterator[Path]:
    """Give a read-only bind mount of the pmxcfs mount (writes: EROFS)."""
    view = BASE / "read-only-view"
    view.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(etc_pve), str(view)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=True)
        view.rmdir()


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pve_mirror", "--root", str(root), *args],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip


def _assert_one_error_line(done: subprocess.CompletedProcess[str], where: Path, cause: str) -> None:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("pve-mirror: ")]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith(f"pve-mirror: {where}: cannot "), errors[0]
    assert cause in errors[0], errors[0]
    print(f"\n{errors[0]}")


def test_no_quorum_gives_one_line_and_exit_1(no_quorum: Path) -> None:
    # site init takes the cluster lock first: the first write to /etc/pve
    done = _cli(no_quorum, "site", "init", "--name", "site-b", "--peer", "site-a")
    _assert_one_error_line(done, no_quorum / "pve-mirror", "no quorum")
    with pytest.raises(FileSystemError, match="no quorum"):
        run_journalled(no_quorum, _plan(1), _functions(_plan(1)), concurrency=1)


def test_a_read_only_mount_gives_one_line_and_exit_1(read_only_bind: Path) -> None:
    done = _cli(read_only_bind, "site", "init", "--name", "site-b", "--peer", "site-a")
    _assert_one_error_line(done, read_only_bind / "pve-mirror", "read-only file system")


def test_a_journal_that_becomes_read_only_stops_the_run(
    etc_pve: Path, read_only_bind: Path
) -> None:
    plan = _plan(3)
    (etc_pve / "j").mkdir()  # the journal's directory exists; its files cannot be written
    ran: list[str] = []
    with pytest.raises(FileSystemError, match=r"cannot record a step in the journal: read-only"):
        execute_plan(plan, _functions(plan, ran), Journal(read_only_bind / "j", "f", "x"))
    assert len(ran) <= 8  # the steps already running end; no further one starts


def test_sync_to_a_peer_without_quorum_fails_with_one_line(
    no_quorum: Path, endpoint: sshd.SshEndpoint, tmp_path: Path
) -> None:
    a = tmp_path / "site-a"
    _site_a(a, endpoint, no_quorum)
    done = _sync(a)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    # Under load the peer's rsync may exit before its "Permission denied" reaches us
    # (seen on trixie's rsync 3.4): then the message names the code and quorum.
    assert "Permission denied" in done.stderr or (
        "rsync code 11: error in file I/O" in done.stderr and "quorum" in done.stderr
    ), done.stderr
    print(f"\n{done.stderr}")


# --- modes and VMIDs as pmxcfs enforces them ---------------------------------------


def test_write_atomic_on_pmxcfs_modes(etc_pve: Path) -> None:
    write_atomic(etc_pve / "pve-mirror" / "plain.cfg", b"x")
    assert (etc_pve / "pve-mirror" / "plain.cfg").stat().st_mode & 0o777 == 0o640
    write_atomic(etc_pve / "priv" / "pve-mirror" / "key", b"secret", 0o600, dir_mode=0o700)
    assert (etc_pve / "priv" / "pve-mirror" / "key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileSystemError, match="gives 0640 .* belong under priv/"):
        write_atomic(etc_pve / "pve-mirror" / "key", b"secret", 0o600)
    assert sorted(os.listdir(etc_pve / "pve-mirror")) == ["plain.cfg"]
    with pytest.raises(FileSystemError, match="file too large .* 1 MiB"):
        write_atomic(etc_pve / "pve-mirror" / "big", b"x" * (MIB + 1))
    assert sorted(os.listdir(etc_pve / "pve-mirror")) == ["plain.cfg"]


def test_install_of_a_vmid_pmxcfs_already_holds_is_refused(
    etc_pve: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (etc_pve / "nodes" / "pve-b2" / "lxc").mkdir(parents=True)
    (etc_pve / "nodes" / "pve-b2" / "lxc" / "100.conf").write_text("memory: 512\n")
    text = "memory: 1024\nname: web\n"
    config = GuestConfig.parse(text, "qemu", "100.conf")
    staged = StagedGuest(100, "qemu", etc_pve / "x", data=text.encode(), config=config)
    with pytest.raises(PolicyError, match="already exists here"):
        install_staged(etc_pve, staged, NODE, {})
    # Created elsewhere after the check (a race): pmxcfs itself refuses the name.
    monkeypatch.setattr("pve_mirror.actions.staging_install.existing_configs", lambda *_a: [])
    with pytest.raises(PolicyError, match=r"already exists in the cluster \(pmxcfs refused"):
        install_staged(etc_pve, staged, NODE, {})
    assert os.listdir(etc_pve / "nodes" / NODE / "qemu-server") == []
