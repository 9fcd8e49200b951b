"""What pve-mirror needs of a PVE API token, and what a token lacks.

PVE grants privileges by ACL (pve-access-control's PVE::RPCEnvironment::permissions).
An API token made with ``pveum user token add`` has privilege separation by default:
without ACLs of its own it may do nothing, and it does not fail loudly:
``/cluster/resources`` answers 200 with no guests in it. So a token is checked by
what ``GET /access/permissions`` (PVE::API2::AccessControl permissions, allowed for
one's own token) says it has, before it is relied on.

What each use needs (the API's permission checks):

- VM.Audit on /vms/{vmid}: see the guest in /cluster/resources and read status/current;
- VM.PowerMgmt on /vms/{vmid}: start, stop, shut down (also through HA);
- Sys.Audit on /nodes/{node}: read tasks that are not the token's own, such as the HA
  stack's start task when HA reports a failed start.

pve-mirror changes no guest config through a token: PVE lets only root@pam set a
hookscript, so ``hook install`` uses pvesh as root on the node.
"""

from __future__ import annotations

from dataclasses import dataclass

from pve_mirror.errors import PveApiError
from pve_mirror.pve.api import PveApi, PveAuthError


@dataclass(frozen=True)
class Need:
    """Privileges needed on one ACL path, and what for."""

    path: str
    privs: tuple[str, ...]
    why: str


def site_needs() -> list[Need]:
    """Give what a site's token needs for failover and failback of any guest (on /vms)."""
    return [
        Need("/vms", ("VM.Audit",), "find guests and read their live status"),
        Need("/vms", ("VM.PowerMgmt",), "start, stop and shut down guests"),
        Need("/nodes", ("Sys.Audit",), "read the HA stack's tasks when a start fails"),
    ]


def guest_needs(vmid: int) -> list[Need]:
    """Give what stopping and starting guest ``vmid`` needs."""
    return [
        Need(f"/vms/{vmid}", ("VM.Audit",), "find it and read its live status"),
        Need(f"/vms/{vmid}", ("VM.PowerMgmt",), "start and stop it"),
    ]


def missing(api: PveApi, needs: list[Need]) -> list[str]:
    """Give ``VM.PowerMgmt on /vms (start, stop ...)`` for each privilege the token lacks.

    Raises PveAuthError when the API refuses the token itself, PveApiError when it
    cannot be asked.
    """
    have: dict[str, set[str]] = {}
    out = []
    for need in needs:
        if need.path not in have:
            answer = api.get("/access/permissions", path=need.path) or {}
            have[need.path] = set((answer.get(need.path) or {}).keys())
        lacking = [p for p in need.privs if p not in have[need.path]]
        if lacking:
            out.append(f"{', '.join(lacking)} on {need.path} ({need.why})")
    return out


def require(api: PveApi, needs: list[Need], whose: str) -> None:
    """Raise PveAuthError naming every missing privilege unless the token has them all.

    ``whose`` names the token in the message (e.g. ``site-b's API token``).
    """
    lacking = missing(api, needs)
    if lacking:
        raise PveAuthError(
            f"{whose} lacks {'; '.join(lacking)}: grant them with an ACL (pveum acl modify "
            "<path> --tokens <token> --roles <role>), or use a token without privilege "
            "separation (--privsep 0) of a user who has them"
        )


def check(api: PveApi, needs: list[Need], whose: str) -> list[str]:
    """Give the missing privileges as one-line problems (empty: all there), never raising
    for a refused or unreachable API: that becomes the one problem reported.
    """
    try:
        return [f"{whose} lacks {m}" for m in missing(api, needs)]
    except PveApiError as exc:
        return [str(exc)]
