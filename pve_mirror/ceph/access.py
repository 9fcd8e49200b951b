"""How to reach a Ceph cluster: plain data, importable without librados.

Kept apart from :mod:`pve_mirror.ceph.cluster` so that the config readers (which
turn a storage or a peer section into an access) never load the bindings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class ClusterAccess:
    """How to reach one Ceph cluster: a conf file and/or options, and the client id.

    ``options`` holds ``mon_host`` and ``keyring`` paths, never a key itself.
    """

    name: str
    client_id: str = "admin"
    conffile: str | None = None
    options: tuple[tuple[str, str], ...] = field(default=())

    def describe(self) -> str:
        """Give a one-line description fit for messages (no secrets)."""
        where = self.conffile or dict(self.options).get("mon_host", "?")
        return f"{self.name} (client.{self.client_id} via {where})"

    def with_mount_timeout(self, seconds: float) -> ClusterAccess:
        """Give the same access, giving up on the monitors after ``seconds``.

        ``Rados.connect(timeout)`` does not bound the first monitor handshake;
        ``client_mount_timeout`` does.
        """
        kept = tuple((k, v) for k, v in self.options if k != "client_mount_timeout")
        return replace(self, options=(*kept, ("client_mount_timeout", str(max(1, int(seconds))))))
