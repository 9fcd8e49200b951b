"""``pve-mirror lock show`` and ``pve-mirror lock break [--yes]``."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
from pathlib import Path

import pytest

from pve_mirror.cli.main import main
from pve_mirror.engine.lock import cluster_lock


def _plant(root: Path, pid: int, host: str) -> Path:
    lock_dir = root / "pve-mirror" / "lock"
    lock_dir.mkdir(parents=True)
    owner = {"command": "failover --all", "pid": pid, "host": host, "at": 1700000000}
    (lock_dir / "owner").write_text(json.dumps(owner))
    return lock_dir


def _dead_pid() -> int:
    proc = multiprocessing.Process(target=os._exit, args=(0,))
    proc.start()
    proc.join()
    assert proc.pid is not None
    return proc.pid


def test_show_names_the_holder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(tmp_path), "lock", "show"]) == 0
    assert "Not locked" in capsys.readouterr().out
    with cluster_lock(tmp_path, "enable vm 100"):
        assert main(["--root", str(tmp_path), "lock", "show", "--output-format", "json"]) == 0
        data = json.loads(capsys.readouterr().out)
    assert data["locked"] and data["command"] == "enable vm 100"
    assert data["pid"] == os.getpid() and data["host"] == socket.gethostname()
    assert data["running_here"] is True and data["since"].endswith("Z")


def test_break_refuses_a_running_process_of_this_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with cluster_lock(tmp_path, "enable vm 100") as lock_dir:
        assert main(["--root", str(tmp_path), "lock", "break", "--yes"]) == 7
        err = capsys.readouterr().err
        assert "which is running" in err and "not broken" in err
        assert (lock_dir / "owner").exists()


def test_break_of_another_hosts_lock_needs_yes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock_dir = _plant(tmp_path, 4242, "pve-other")
    assert main(["--root", str(tmp_path), "lock", "break"]) == 4
    err = capsys.readouterr().err
    assert "failover --all (pid 4242 on pve-other" in err and "--yes" in err
    assert lock_dir.is_dir()
    assert main(["--root", str(tmp_path), "lock", "break", "--yes"]) == 0
    assert "Broke the lock of failover --all (pid 4242 on pve-other" in capsys.readouterr().out
    assert not lock_dir.exists()
    assert main(["--root", str(tmp_path), "lock", "break"]) == 0
    assert "nothing to break" in capsys.readouterr().out


def test_break_of_a_dead_process_here_needs_no_yes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock_dir = _plant(tmp_path, _dead_pid(), socket.gethostname())
    assert main(["--root", str(tmp_path), "lock", "show"]) == 0
    assert "no longer runs" in capsys.readouterr().out
    assert main(["--root", str(tmp_path), "lock", "break"]) == 0
    assert not lock_dir.exists()
