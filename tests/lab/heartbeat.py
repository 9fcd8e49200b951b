"""Heartbeat records that simulated guests write to their first disk, and a reader.

A running guest of the PVE simulator writes one 512-byte record per second into a
ring of ``RING_SLOTS`` slots starting at ``RING_OFFSET`` of its first disk. Every
disk of the guest also gets a marker record at offset 0 when it starts, which is
the write that proves the disk is writable. Reading the ring back (from the site
the data was replicated to) shows exactly which records survived a failover.

Record layout (little endian): magic ``PVEMHB01`` or ``PVEMDK01`` (8 bytes), vmid
(u32), disk index (u32), boot (u64: unix second the guest run started), sequence
number within that run (u64, from 0), unix time (f64), then zero padding and a
CRC32 of the first 508 bytes in the last 4 bytes. The slot of heartbeat ``seq`` is
``(boot + seq) % RING_SLOTS``, so a later run (e.g. after a failover) overwrites
only records older than ``RING_SLOTS`` seconds.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECORD_SIZE = 512
RING_OFFSET = 1024 * 1024
RING_SLOTS = 1024
MARKER_OFFSET = 0
HEARTBEAT_MAGIC = b"PVEMHB01"
MARKER_MAGIC = b"PVEMDK01"

_HEAD = struct.Struct("<8sIIQQd")
_CRC = struct.Struct("<I")


@dataclass(frozen=True, order=True)
class Record:
    """One decoded record: heartbeat (``kind == "heartbeat"``) or disk marker."""

    time: float
    boot: int
    seq: int
    vmid: int
    disk: int
    kind: str


def encode(magic: bytes, vmid: int, disk: int, boot: int, seq: int, when: float) -> bytes:
    """Give the 512-byte record for these values."""
    head = _HEAD.pack(magic, vmid, disk, boot, seq, when)
    body = head + b"\0" * (RECORD_SIZE - _CRC.size - len(head))
    return body + _CRC.pack(zlib.crc32(body))


def encode_heartbeat(vmid: int, boot: int, seq: int, when: float) -> bytes:
    """Give the heartbeat record number ``seq`` of the run ``boot`` of guest ``vmid``."""
    return encode(HEARTBEAT_MAGIC, vmid, 0, boot, seq, when)


def encode_marker(vmid: int, disk: int, boot: int, when: float) -> bytes:
    """Give the marker record written at start of run ``boot`` to disk number ``disk``."""
    return encode(MARKER_MAGIC, vmid, disk, boot, 0, when)


def heartbeat_offset(boot: int, seq: int) -> int:
    """Give the byte offset on the first disk where heartbeat ``seq`` of run ``boot`` goes."""
    return RING_OFFSET + ((boot + seq) % RING_SLOTS) * RECORD_SIZE


def decode(raw: bytes) -> Record | None:
    """Give the record in ``raw`` (512 bytes), or None if it is empty or damaged."""
    if len(raw) != RECORD_SIZE:
        return None
    body, (crc,) = raw[: -_CRC.size], _CRC.unpack(raw[-_CRC.size :])
    if zlib.crc32(body) != crc:
        return None
    magic, vmid, disk, boot, seq, when = _HEAD.unpack(body[: _HEAD.size])
    kind = {HEARTBEAT_MAGIC: "heartbeat", MARKER_MAGIC: "marker"}.get(magic)
    if kind is None:
        return None
    return Record(time=when, boot=boot, seq=seq, vmid=vmid, disk=disk, kind=kind)


def decode_ring(ring: bytes) -> list[Record]:
    """Give the valid heartbeat records of a ring image, oldest first."""
    out = []
    for slot in range(len(ring) // RECORD_SIZE):
        rec = decode(ring[slot * RECORD_SIZE : (slot + 1) * RECORD_SIZE])
        if rec is not None and rec.kind == "heartbeat":
            out.append(rec)
    return sorted(out)


@contextmanager
def open_image_read_only(
    rados_conf: Path, pool: str, image: str, namespace: str = ""
) -> Iterator[Any]:
    """Give an ``rbd.Image`` opened read-only (works on a non-primary image too).

    Raises the ``rados``/``rbd`` errors when the cluster or the image is unreachable.
    """
    import rados
    import rbd

    cluster = rados.Rados(
        conffile=str(rados_conf),
        conf={"client_mount_timeout": "15", "rados_mon_op_timeout": "30"},
    )
    try:
        cluster.connect(timeout=15)
        with cluster.open_ioctx(pool) as ioctx:
            if namespace:
                ioctx.set_namespace(namespace)
            with rbd.Image(ioctx, image, read_only=True) as img:
                yield img
    finally:
        cluster.shutdown()


def read_heartbeats(
    rados_conf: Path, pool: str, image: str, *, namespace: str = "", snap_id: int | None = None
) -> list[Record]:
    """Give the heartbeat records stored in RBD image ``pool/[namespace/]image``.

    With ``snap_id`` reads that snapshot (e.g. a mirror snapshot). Raises the
    ``rados``/``rbd`` errors when the cluster or the image is unreachable.
    """
    with open_image_read_only(rados_conf, pool, image, namespace) as img:
        if snap_id is not None:
            img.set_snap_by_id(snap_id)
        return decode_ring(bytes(img.read(RING_OFFSET, RING_SLOTS * RECORD_SIZE)))


def read_marker(rados_conf: Path, pool: str, image: str, *, namespace: str = "") -> Record | None:
    """Give the start marker record of an RBD image, or None if it has none."""
    with open_image_read_only(rados_conf, pool, image, namespace) as img:
        return decode(bytes(img.read(MARKER_OFFSET, RECORD_SIZE)))
