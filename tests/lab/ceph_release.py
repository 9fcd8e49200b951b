"""What the lab must do differently on the Ceph releases it runs on.

The lab runs on Debian's Ceph: 16.2 (bookworm, the machine), 18.2 (trixie) and 20.2
(forky), the last two in debootstrapped roots (``.ci/ceph-matrix.sh``). Each
difference is detected from the installed files, never from a release name, so a
point release that fixes one drops its workaround by itself. docs/ceph-releases.md
describes every difference and where the product handles its own.
"""

from __future__ import annotations

import base64
import functools
import re
import struct
import subprocess
from importlib import metadata
from pathlib import Path

MGR_DIR = Path("/usr/share/ceph/mgr")
# Where Debian and upstream packages put the OSD object classes (libcls_*.so).
CLASS_DIR_GLOBS = ("/usr/lib/*/rados-classes", "/usr/lib64/rados-classes", "/usr/lib/rados-classes")

# A lab-only stand-in for bcrypt inside ceph-mgr (see mgr_needs_bcrypt_standin):
# mgr_util imports bcrypt only for the dashboard's password hashing, which the lab's
# lean mgr never loads; any call says so instead of hashing wrongly.
BCRYPT_STANDIN = '''"""Lab-only stand-in for bcrypt in ceph-mgr (from tests/lab/ceph_release.py).

The real bcrypt on this system is a PyO3 module, which ceph-mgr's subinterpreters
cannot import; rbd_support only needs mgr_util to import, never to hash.
"""


def _refuse(*args, **kwargs):
    raise RuntimeError("bcrypt is a lab stand-in in this ceph-mgr: no password hashing")


gensalt = hashpw = checkpw = kdf = _refuse
'''


@functools.cache
def ceph_version() -> str:
    """Give the installed Ceph version (``18.2.7``), or ``unknown`` if ceph-mon cannot tell."""
    try:
        out = subprocess.run(
            ["/usr/bin/ceph-mon", "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(r"ceph version (\d+\.\d+\.\d+)", out)
    return match.group(1) if match else "unknown"


# cephx secret encodings: (key type, secret bytes). AES-128 until 19.2; 20.2 made
# AES-256 ("aes256k") the only cipher a new cluster accepts.
CEPHX_AES = (1, 16)
CEPHX_HEADER = struct.Struct("<HIIH")  # type, created (s, ns), secret length


@functools.cache
def cephx_key_format() -> tuple[int, int]:
    """Give the (key type, secret length) this Ceph's new keys have.

    Asked of ``ceph-authtool --gen-print-key``, which makes keys the way the mon
    expects them: 16.2 and 18.2 give AES-128 (type 1, 16 bytes); 20.2 gives AES-256
    (type 2, 32 bytes) and its mons deny AES-128 keys of a new cluster ("permission
    denied", health AUTH_INSECURE_SERVICE_KEY_TYPE). Falls back to AES-128.
    """
    try:
        out = subprocess.run(
            ["/usr/bin/ceph-authtool", "--gen-print-key"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
        raw = base64.b64decode(out, validate=True)
        key_type, _sec, _nsec, length = CEPHX_HEADER.unpack_from(raw)
    except (OSError, subprocess.TimeoutExpired, ValueError, struct.error):
        return CEPHX_AES
    if length != len(raw) - CEPHX_HEADER.size:
        return CEPHX_AES
    return int(key_type), int(length)


def osd_class_dir() -> str | None:
    """Give the directory holding the OSD object classes (libcls_rbd.so), or None.

    From 18.2 on Debian's OSD defaults to a *relative* ``osd_class_dir``
    (``lib/x86_64-linux-gnu/rados-classes``) and finds no class at all: every
    mirroring call then fails with EOPNOTSUPP. The lab always sets the absolute path.
    """
    for pattern in CLASS_DIR_GLOBS:
        for candidate in sorted(Path("/").glob(pattern.lstrip("/"))):
            if (candidate / "libcls_rbd.so").is_file():
                return str(candidate)
    return None


def _bcrypt_major() -> int | None:
    try:
        version = metadata.version("bcrypt")
    except metadata.PackageNotFoundError:
        return None
    match = re.match(r"(\d+)", version)
    return int(match.group(1)) if match else None


@functools.cache
def mgr_needs_bcrypt_standin() -> bool:
    """Tell whether ceph-mgr's rbd_support would fail on bcrypt (Debian trixie, 18.2).

    True when the mgr's ``mgr_util.py`` imports bcrypt at module level and the system
    bcrypt is 4.0 or newer, which is written in Rust with PyO3 and refuses to load in
    a subinterpreter ("PyO3 modules do not yet support subinterpreters"): every module
    importing mgr_util, rbd_support included, then fails to load. Neither 16.2's nor
    20.2's mgr_util imports bcrypt.
    """
    try:
        text = (MGR_DIR / "mgr_util.py").read_text(errors="replace")
    except OSError:
        return False
    if not re.search(r"^(import bcrypt|from bcrypt import)", text, re.MULTILINE):
        return False
    major = _bcrypt_major()
    return major is not None and major >= 4


def mgr_env(python_dir: Path) -> dict[str, str]:
    """Give the extra environment of the lab's ceph-mgr (empty where none is needed).

    With the bcrypt stand-in, ``python_dir`` (see :func:`write_mgr_python`) goes onto
    the mgr's PYTHONPATH, ahead of the system's bcrypt.
    """
    return {"PYTHONPATH": str(python_dir)} if mgr_needs_bcrypt_standin() else {}


def write_mgr_python(python_dir: Path) -> None:
    """Write the bcrypt stand-in to ``python_dir/bcrypt.py`` if this Ceph needs it."""
    if mgr_needs_bcrypt_standin():
        python_dir.mkdir(parents=True, exist_ok=True)
        (python_dir / "bcrypt.py").write_text(BCRYPT_STANDIN)


__all__ = [
    "ceph_version",
    "cephx_key_format",
    "mgr_env",
    "mgr_needs_bcrypt_standin",
    "osd_class_dir",
    "write_mgr_python",
]
