"""File system refusals (pmxcfs's above all) become one line naming the file and the cause."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pve_mirror import files
from pve_mirror.actions import inventory
from pve_mirror.cli.main import main
from pve_mirror.errors import FileSystemError


@pytest.mark.parametrize(
    ("code", "path", "cause"),
    [
        (errno.EROFS, "/srv/x", "read-only file system"),
        (errno.EACCES, "/etc/pve/pve-mirror.cfg", "no quorum"),
        (errno.EACCES, "/srv/x", "permission denied"),
        (errno.EFBIG, "/etc/pve/pve-mirror/journal/a.jsonl", "at most 1 MiB"),
        (errno.ENOSPC, "/srv/x", "no space left"),
        (errno.EPERM, "/etc/pve/nodes/a/qemu-server/100.conf", "mode 0640"),
        (errno.ENOSYS, "/etc/pve/x", "no symlinks"),
        (errno.EEXIST, "/etc/pve/nodes/b/qemu-server/100.conf", "VMID 100 already exists"),
        (errno.ENOTCONN, "/etc/pve/x", "pve-cluster"),
    ],
)
def test_each_refusal_is_one_line_with_file_and_cause(code: int, path: str, cause: str) -> None:
    error = files.fs_error(OSError(code, os.strerror(code), path), action="write")
    text = str(error)
    assert text.startswith(f"{path}: cannot write: ")
    assert cause in text
    assert "\n" not in text
    assert error.errno == code
    assert error.exit_code == 1


def test_the_quorum_hint_is_given_only_on_pmxcfs() -> None:
    text = str(files.fs_error(OSError(errno.EACCES, "Permission denied", "/srv/x")))
    assert "quorum" not in text


def test_rename_onto_a_taken_vmid_names_the_vmid() -> None:
    exc = OSError(errno.EEXIST, "File exists", "/etc/pve/nodes/a/lxc/.7.tmp", None, "x/200.conf")
    assert "VMID 200 already exists" in str(files.fs_error(exc, "/etc/pve/nodes/a/lxc/200.conf"))


def test_write_atomic_names_the_directory_it_cannot_make(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(FileSystemError, match=r"/file/sub: cannot create the directory: not a dir"):
        files.write_atomic(tmp_path / "file" / "sub" / "x.cfg", b"x")


def test_write_atomic_leaves_no_temporary_file_on_failure(tmp_path: Path) -> None:
    (tmp_path / "x.cfg").mkdir()  # a directory where the file should go
    with pytest.raises(FileSystemError, match=r"x.cfg: cannot write: "):
        files.write_atomic(tmp_path / "x.cfg", b"data")
    assert os.listdir(tmp_path) == ["x.cfg"]


def test_write_atomic_refuses_a_secret_the_file_system_would_expose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def open_like_pmxcfs(path: str, flags: int, mode: int = 0o777) -> int:
        # pmxcfs ignores the mode: every file outside priv/ is 0640.
        fd = real_open(path, flags, mode)
        os.fchmod(fd, 0o640)
        return fd

    monkeypatch.setattr(os, "open", open_like_pmxcfs)
    with pytest.raises(FileSystemError, match=r"mode 0600: the file system gives 0640"):
        files.write_atomic(tmp_path / "key", b"secret", 0o600)
    assert os.listdir(tmp_path) == []
    files.write_atomic(tmp_path / "cfg", b"plain", 0o644)  # less than asked is fine
    assert (tmp_path / "cfg").read_bytes() == b"plain"


def test_the_cli_turns_any_oserror_into_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def refuse(_root: object) -> None:
        raise OSError(errno.EACCES, "Permission denied", "/etc/pve/nodes")

    monkeypatch.setattr(inventory, "list_guests", refuse)
    assert main(["--root", str(tmp_path), "guests"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("pve-mirror: /etc/pve/nodes: cannot access: permission denied")
    assert "no quorum" in err
    with pytest.raises(OSError, match="Permission denied"):
        main(["--root", str(tmp_path), "guests", "--debug"])


def test_the_cli_shows_a_bug_as_one_line_without_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def broken(_root: object) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(inventory, "list_guests", broken)
    assert main(["--root", str(tmp_path), "guests"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "pve-mirror: internal error (a bug): ZeroDivisionError: division by zero; "
        "--debug shows where\n"
    )
    with pytest.raises(ZeroDivisionError):
        main(["--root", str(tmp_path), "--debug", "guests"])
