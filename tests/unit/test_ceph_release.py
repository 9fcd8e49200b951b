"""The lab's per-release decisions (tests/lab/ceph_release.py), on made-up installations."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.lab import ceph_release as cr


@pytest.fixture(autouse=True)
def _no_cache() -> None:
    cr.mgr_needs_bcrypt_standin.cache_clear()
    cr.cephx_key_format.cache_clear()


def _mgr_util(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    (tmp_path / "mgr_util.py").write_text(text)
    monkeypatch.setattr(cr, "MGR_DIR", tmp_path)


@pytest.mark.parametrize(
    ("mgr_util", "bcrypt_major", "needed"),
    [
        ("import os\nimport bcrypt\n", 4, True),  # trixie: 18.2.7 with bcrypt 4.2 (PyO3)
        ("import os\nimport bcrypt\n", 3, False),  # bcrypt 3.x is cffi, loads anywhere
        ("import os\n", 5, False),  # 16.2 and 20.2: mgr_util does not import bcrypt
        ("def f():\n    import bcrypt\n", 5, False),  # a lazy import fails only when called
        ("import bcrypt\n", None, False),  # no bcrypt installed: nothing to stand in for
    ],
)
def test_bcrypt_standin_only_where_rbd_support_would_fail(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mgr_util: str,
    bcrypt_major: int | None,
    needed: bool,
) -> None:
    _mgr_util(tmp_path, monkeypatch, mgr_util)
    monkeypatch.setattr(cr, "_bcrypt_major", lambda: bcrypt_major)
    assert cr.mgr_needs_bcrypt_standin() is needed
    assert cr.mgr_env(tmp_path / "py") == ({"PYTHONPATH": str(tmp_path / "py")} if needed else {})
    cr.write_mgr_python(tmp_path / "py")
    assert (tmp_path / "py" / "bcrypt.py").exists() is needed


def test_the_standin_refuses_to_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _mgr_util(tmp_path, monkeypatch, "import bcrypt\n")
    monkeypatch.setattr(cr, "_bcrypt_major", lambda: 4)
    cr.write_mgr_python(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile((tmp_path / "bcrypt.py").read_text(), "bcrypt.py", "exec"), namespace)
    with pytest.raises(RuntimeError, match="stand-in"):
        namespace["hashpw"](b"x", b"salt")


def _authtool_gives(monkeypatch: pytest.MonkeyPatch, stdout: str) -> None:
    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        assert argv == ["/usr/bin/ceph-authtool", "--gen-print-key"]
        return subprocess.CompletedProcess(argv, 0, stdout, "")

    monkeypatch.setattr(subprocess, "run", run)


def _key(key_type: int, length: int, secret_len: int | None = None) -> str:
    header = cr.CEPHX_HEADER.pack(key_type, 1_700_000_000, 0, length)
    return base64.b64encode(header + b"k" * (length if secret_len is None else secret_len)).decode()


@pytest.mark.parametrize(
    ("printed", "expected"),
    [
        (_key(1, 16), (1, 16)),  # 16.2, 18.2: AES-128
        (_key(2, 32), (2, 32)),  # 20.2: AES-256 ("aes256k")
        (_key(2, 32, secret_len=16), cr.CEPHX_AES),  # inconsistent length: not trusted
        ("not base64 at all!", cr.CEPHX_AES),
        ("", cr.CEPHX_AES),
    ],
)
def test_lab_keys_take_the_type_the_installed_ceph_makes(
    monkeypatch: pytest.MonkeyPatch, printed: str, expected: tuple[int, int]
) -> None:
    _authtool_gives(monkeypatch, printed + "\n")
    assert cr.cephx_key_format() == expected


def test_osd_class_dir_is_where_cls_rbd_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty, real = tmp_path / "a" / "rados-classes", tmp_path / "b" / "rados-classes"
    empty.mkdir(parents=True)
    real.mkdir(parents=True)
    (real / "libcls_rbd.so").write_bytes(b"")
    monkeypatch.setattr(cr, "CLASS_DIR_GLOBS", (f"{tmp_path}/*/rados-classes",))
    assert cr.osd_class_dir() == str(real)
    (real / "libcls_rbd.so").unlink()
    assert cr.osd_class_dir() is None
