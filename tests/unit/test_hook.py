"""The guest hookscript on a fake tree: install, chaining, idempotency, phases (no Ceph)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pve_mirror.actions import hook
from pve_mirror.cli.main import main
from pve_mirror.pve.siteconfig import GuestEntry, load_site_config
from tests.lab.pvesim.api import Simulator
from tests.unit.pvetree import STORAGE_CFG, VM_100, VM_101, build_tree

REPO = Path(__file__).resolve().parents[2]


def make_site(tmp_path: Path) -> tuple[Path, Path]:
    """Give (root, snippets dir): the standard tree with ``local`` at a temp path."""
    root = tmp_path / "pve"
    build_tree(root)
    local = tmp_path / "var-lib-vz"
    (local / "snippets").mkdir(parents=True)
    (root / "storage.cfg").write_text(
        STORAGE_CFG.replace(
            "\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup\n",
            # shared: one snippet serves both nodes (the multi-node case is an integration test)
            f"\tpath {local}\n\tcontent iso,vztmpl,backup,snippets\n\tshared 1\n",
        )
    )
    cfg = load_site_config(root, required=False)
    cfg.set_section("site", "site-a", {"peer": "site-b"})
    cfg.set_section("peer", "site-b", {"ssh": "root@192.0.2.1"})
    cfg.set_guest(GuestEntry("qemu", 100))
    cfg.set_guest(GuestEntry("qemu", 101))
    cfg.set_guest(GuestEntry("lxc", 200))
    cfg.set_guest(GuestEntry("qemu", 102, enabled=False))
    cfg.save()
    return root, local / "snippets"


@pytest.fixture
def pve_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Serve the tree at ``tmp_path/pve`` with the lab's PVE simulator and put the lab's
    pvesh (root@pam, as on a node) first on PATH: ``hook install`` sets hookscripts through
    the API. Runs as if on node pve1. Gives the tree's root (build it with make_site first)."""
    from tests.lab.pvesim.server import PveHTTPServer, ensure_certificate, make_context

    root, scratch = tmp_path / "pve", tmp_path / "pvesim"
    scratch.mkdir()
    cert, key = ensure_certificate(scratch, "pve1")
    simulator = Simulator(root, scratch)
    server = PveHTTPServer(("127.0.0.1", 0), simulator, {}, make_context(cert, key),
                           root_secret="unit-root")  # fmt: skip
    (scratch / "root-secret").write_text("unit-root\n")
    ready = {"port": server.server_address[1], "cert": str(cert)}
    (scratch / "pvesim.ready").write_text(json.dumps(ready))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pvesh").write_text(
        f"#!/bin/sh\nPYTHONPATH={REPO} exec /usr/bin/python3 -m tests.lab.pvesh "
        f'--scratch {scratch} "$@"\n'
    )
    (bin_dir / "pvesh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("PVE_MIRROR_NODE", "pve1")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield root
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        simulator.shutdown_all()


def write_script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def test_packaged_hook_is_the_default_snippet() -> None:
    packaged = REPO / "hooks" / "pve-mirror-hook"
    assert packaged.read_text() == hook.snippet_text()
    assert os.access(packaged, os.X_OK)


def test_install_sets_hook_chains_and_is_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pve_api: Path
) -> None:
    root, snippets = make_site(tmp_path)
    vm101 = root / "nodes/pve2/qemu-server/101.conf"
    vm101.write_text(VM_101 + "hookscript: local:snippets/other.sh\n")
    before = {p: p.read_bytes() for p in root.rglob("*.conf")}

    assert main(["--root", str(root), "hook", "install", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "VM 100 on pve1: set hookscript local:snippets/pve-mirror-hook" in out
    assert (
        "VM 101 on pve2: set hookscript local:snippets/pve-mirror-hook, "
        "chaining local:snippets/other.sh" in out
    )
    assert "CT 200" in out and "102" not in out
    assert {p: p.read_bytes() for p in root.rglob("*.conf")} == before
    assert not (snippets / hook.HOOK_NAME).exists()

    assert main(["--root", str(root), "hook", "install"]) == 0
    capsys.readouterr()
    snippet = snippets / hook.HOOK_NAME
    assert os.access(snippet, os.X_OK)
    text = snippet.read_text()
    assert f"PVE_MIRROR_ROOT={root}\n" in text
    assert f"PYTHONPATH={REPO}:/usr/lib/python3/dist-packages\n" in text
    assert "exec /usr/bin/python3 -S -c 'from pve_mirror.hookscript import run; run()'" in text
    vm100 = root / "nodes/pve1/qemu-server/100.conf"
    lines = vm100.read_text().splitlines(keepends=True)
    assert "hookscript: local:snippets/pve-mirror-hook\n" in lines
    # every other line is untouched, in order
    assert "".join(x for x in lines if not x.startswith("hookscript:")) == VM_100
    assert "hookscript: local:snippets/pve-mirror-hook\n" in vm101.read_text()
    assert (root / "pve-mirror/hooks/101.chain").read_text() == "local:snippets/other.sh\n"
    assert not (root / "pve-mirror/hooks/100.chain").exists()
    assert "hookscript" not in (root / "nodes/pve2/qemu-server/102.conf").read_text()
    assert (
        "hookscript: local:snippets/pve-mirror-hook"
        in (root / "nodes/pve1/lxc/200.conf").read_text()
    )

    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert main(["--root", str(root), "hook", "install"]) == 0
    assert "already installed, nothing to do" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == after
    assert (root / "pve-mirror/hooks/101.chain").read_text() == "local:snippets/other.sh\n"


def test_install_skips_locked_guest_and_needs_dir_storage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pve_api: Path
) -> None:
    root, _snippets = make_site(tmp_path)
    vm100 = root / "nodes/pve1/qemu-server/100.conf"
    vm100.write_text("lock: backup\n" + VM_100)
    assert main(["--root", str(root), "hook", "install"]) == 0
    err = capsys.readouterr().err
    assert "VM 100 is locked (backup); skipped" in err
    assert "hookscript" not in vm100.read_text()
    assert main(["--root", str(root), "hook", "install", "--storage", "ceph-vm"]) == 4
    assert "not a storage with a path" in capsys.readouterr().err
    assert main(["--root", str(root), "hook", "install", "--storage", "nope"]) == 3


def test_invalid_vmid_and_unknown_phase() -> None:
    assert hook.run_hook(Path("/nonexistent"), "abc", "pre-start").exit_code == 2
    assert hook.run_hook(Path("/nonexistent"), "100", "pre-migrate").exit_code == 0
    assert hook.run_hook(Path("/nonexistent"), "100", "post-start").exit_code == 0


def test_pre_start_fails_closed_when_guest_is_unknown(tmp_path: Path) -> None:
    root, _ = make_site(tmp_path)
    outcome = hook.run_hook(root, "777", "pre-start")
    assert outcome.exit_code == 1
    assert "fail closed" in outcome.errors[0] and "no guest 777" in outcome.errors[0]
    stop = hook.run_hook(root, "777", "post-stop")
    assert stop.exit_code == 0 and stop.errors[0].startswith("warning:")


def test_pre_start_without_rbd_disks_needs_no_ceph(tmp_path: Path) -> None:
    root, _ = make_site(tmp_path)
    # CT 201's current config has only local-lvm (its ceph-ext disk is pending)
    (root / "nodes/pve2/lxc/201.conf").write_text(
        "arch: amd64\nhostname: cache\nrootfs: local-lvm:vm-201-disk-0,size=2G\n"
    )
    assert hook.run_hook(root, "201", "pre-start").exit_code == 0


def test_pre_start_fails_closed_when_ceph_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = make_site(tmp_path)
    monkeypatch.setattr(hook, "CONNECT_TIMEOUT", 1.0)
    started = time.monotonic()
    outcome = hook.run_hook(root, "102", "pre-start")
    assert time.monotonic() - started < 30
    assert outcome.exit_code == 1
    assert "cannot check mirroring (fail closed)" in outcome.errors[0]


def test_started_disks_skip_unused_and_snapshots(tmp_path: Path) -> None:
    root, _ = make_site(tmp_path)
    _ref, disks, _storages = hook.started_disks(root, 100)
    keys = sorted((d.key, d.section or "") for d in disks)
    # current disks + cloud-init + the pending scsi1; not unused0, not the snapshot vmstate
    assert keys == [
        ("efidisk0", ""),
        ("ide0", ""),
        ("scsi0", ""),
        ("scsi1", "PENDING"),
        ("tpmstate0", ""),
    ]


def test_chained_hook_runs_first_and_can_refuse(tmp_path: Path) -> None:
    root, snippets = make_site(tmp_path)
    marker = tmp_path / "calls"
    write_script(
        snippets / "other.sh",
        f'echo "$1 $2" >> {marker}\necho "other says $2"\necho "other warns" >&2\n'
        '[ "$2" = pre-start ] && exit 3\nexit 0\n',
    )
    (root / "pve-mirror/hooks").mkdir(parents=True)
    (root / "pve-mirror/hooks/777.chain").write_text("local:snippets/other.sh\n")
    outcome = hook.run_hook(root, "777", "pre-start")
    assert outcome.exit_code == 1
    assert outcome.output == ["other says pre-start"]
    assert outcome.chained_stderr == ["other warns"]
    assert (
        "chained hookscript local:snippets/other.sh failed on pre-start (exit 3)"
        in outcome.errors[0]
    )
    assert hook.run_hook(root, "777", "post-start").exit_code == 0
    assert marker.read_text() == "777 pre-start\n777 post-start\n"


def test_chain_to_a_non_snippet_is_refused(tmp_path: Path) -> None:
    root, _ = make_site(tmp_path)
    (root / "pve-mirror/hooks").mkdir(parents=True)
    (root / "pve-mirror/hooks/100.chain").write_text("local:../../bin/sh\n")
    outcome = hook.run_hook(root, "100", "pre-start")
    assert outcome.exit_code == 1 and "not a snippets volume" in outcome.errors[0]


def test_hookscript_module_entry_point(tmp_path: Path) -> None:
    root, _ = make_site(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO), PVE_MIRROR_ROOT=str(root))
    run = ["/usr/bin/python3", "-m", "pve_mirror.hookscript"]
    ok = subprocess.run(
        [*run, "100", "post-start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [*run, "100"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert bad.returncode == 2 and "usage" in bad.stderr
    refused = subprocess.run(
        [*run, "777", "pre-start"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith("pve-mirror hook: VMID 777: refusing to start")
    assert len(refused.stderr.strip().splitlines()) == 1


def test_hook_run_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = make_site(tmp_path)
    assert main(["--root", str(root), "hook", "run", "777", "pre-start"]) == 1
    assert "refusing to start" in capsys.readouterr().err
    assert main(["--root", str(root), "hook", "run", "100", "pre-stop"]) == 0
