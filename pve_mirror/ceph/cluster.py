"""One librados connection per cluster, shared by every image operation of a command.

Opening a cluster connection costs several monitor round trips, so an action opens
one :class:`Cluster` per site and runs all of its image operations (concurrently,
from threads) through it.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import rados
import rbd

from pve_mirror.ceph.access import ClusterAccess
from pve_mirror.errors import CephError

T = TypeVar("T")

# The bindings are Cython extension modules without type information.
Ioctx = Any
RadosHandle = Any

# Bounded waits everywhere: a dead cluster must give an error, not a hang.
TIMEOUTS = {
    "client_mount_timeout": "15",
    "rados_mon_op_timeout": "30",
    "rados_osd_op_timeout": "60",
}


# What a client meets when the cluster is down or cut off (never a refusal of ours):
# librados retries refused connections until the mount timeout, so ETIMEDOUT is usual.
UNREACHABLE_ERRNOS = frozenset(
    {errno.ETIMEDOUT, errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH}
)


class CephUnreachableError(CephError):
    """The cluster did not answer: a timeout, a refused connection or no route.

    Only this failure to connect may count as "the cluster is down"; any other
    (a missing conf or keyring, an auth refusal) says nothing about whether it runs.
    """

    unreachable = True


def ceph_call(what: str, call: Callable[[], T]) -> T:
    """Run one librados/librbd call and give its result.

    Raises CephError naming ``what`` when the library raises one of its errors, so
    that the message says which image and which operation failed.
    """
    try:
        return call()
    except (rados.Error, rbd.Error) as exc:
        raise CephError(f"{what}: {describe_error(exc)}") from exc


def describe_error(exc: BaseException) -> str:
    """Give a short text for a librados/librbd exception, with its errno name."""
    text = str(exc).strip() or type(exc).__name__
    return f"{text} ({type(exc).__name__})"


class Cluster:
    """A connected cluster. Thread-safe: IO contexts are cached per pool and namespace."""

    def __init__(self, access: ClusterAccess) -> None:
        self.access = access
        self._rados: RadosHandle | None = None
        self._ioctxs: dict[tuple[str, str], Ioctx] = {}
        self._lock = threading.Lock()
        self._fsid: str | None = None
        self.rbd = rbd.RBD()

    def connect(self, timeout: float = 15.0) -> None:
        """Connect; raises CephError naming the cluster if it cannot connect:
        CephUnreachableError when it did not answer (timeout, refused, no route)."""
        conf = dict(TIMEOUTS)
        conf.update(dict(self.access.options))
        try:
            handle = rados.Rados(
                rados_id=self.access.client_id,
                conffile=self.access.conffile or "",
                conf=conf,
            )
            handle.connect(timeout=int(timeout))
        except (rados.Error, rbd.Error) as exc:
            # Same message either way: callers that only catch CephError see no change.
            kind = (
                CephUnreachableError
                if abs(getattr(exc, "errno", 0) or 0) in UNREACHABLE_ERRNOS
                else CephError
            )
            raise kind(
                f"cannot connect to Ceph cluster {self.access.describe()}: {describe_error(exc)}"
            ) from exc
        self._rados = handle

    @property
    def rados(self) -> RadosHandle:
        """The connected handle; raises CephError if :meth:`connect` was not called."""
        if self._rados is None:
            raise CephError(f"not connected to {self.access.describe()}")
        return self._rados

    @property
    def fsid(self) -> str:
        """Give the cluster's fsid (two accesses may reach the same cluster)."""
        if self._fsid is None:
            self._fsid = str(ceph_call(f"{self.access.name}: fsid", self.rados.get_fsid))
        return self._fsid

    def ioctx(self, pool: str, namespace: str = "") -> Ioctx:
        """Give the IO context of ``pool``/``namespace``; raises CephError if there is no pool."""
        key = (pool, namespace)
        with self._lock:
            if key not in self._ioctxs:
                ctx = ceph_call(
                    f"{self.access.name}: open pool {pool}", lambda: self.rados.open_ioctx(pool)
                )
                if namespace:
                    ctx.set_namespace(namespace)
                self._ioctxs[key] = ctx
            return self._ioctxs[key]

    def pool_exists(self, pool: str) -> bool:
        """Tell whether ``pool`` exists."""
        return bool(
            ceph_call(
                f"{self.access.name}: look up pool {pool}", lambda: self.rados.pool_exists(pool)
            )
        )

    def mgr_command(self, command: dict[str, Any], what: str) -> str:
        """Send a mgr command (JSON) ; give its output or raise CephError with the mgr's message."""
        return self._command("mgr", command, what)

    def mon_command(self, command: dict[str, Any], what: str) -> str:
        """Send a mon command (JSON) ; give its output or raise CephError with the mon's message."""
        return self._command("mon", command, what)

    def _command(self, target: str, command: dict[str, Any], what: str) -> str:
        import json  # here: the guest hook, which sends no command, does without it

        send = self.rados.mgr_command if target == "mgr" else self.rados.mon_command
        ret, out, errs = ceph_call(
            f"{self.access.name}: {what}",
            lambda: send(json.dumps(command), b"", timeout=30),
        )
        if ret != 0:
            message = errs.strip() or f"error {ret}"
            raise CephError(f"{self.access.name}: {what}: {message}")
        return out.decode("utf-8", errors="replace") if isinstance(out, bytes) else str(out)

    def close(self) -> None:
        """Close every IO context and the connection."""
        with self._lock:
            for ctx in self._ioctxs.values():
                ctx.close()
            self._ioctxs.clear()
        if self._rados is not None:
            self._rados.shutdown()
            self._rados = None


@contextmanager
def connected(access: ClusterAccess, timeout: float = 15.0) -> Iterator[Cluster]:
    """Give a connected Cluster for the block and close it afterwards."""
    cluster = Cluster(access)
    cluster.connect(timeout)
    try:
        yield cluster
    finally:
        cluster.close()
