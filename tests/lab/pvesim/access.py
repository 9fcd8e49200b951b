"""Users, API tokens, ACLs and privileges, read from the config root as PVE reads them.

Follows pve-access-control:

- ``user.cfg`` lines (PVE::AccessControl::parse_user_config): ``user:<userid>:<enable>:...``,
  ``group:<name>:<users>:...``, ``role:<name>:<privs>:``, ``token:<user>!<name>:<expire>:
  <privsep>:<comment>:`` and ``acl:<propagate>:<path>:<users,@groups,tokens>:<roles>:``.
  root@pam always exists (userconfig_force_defaults); built-in roles come from
  ``$privgroups`` (create_roles).
- token secrets in ``priv/token.cfg``, one ``<tokenid> <secret>`` per line
  (PVE::Cluster::verify_token); a token must also be in user.cfg (verify_token ->
  check_token_exist), else pveproxy answers 401 "Authentication failed!".
- privileges (PVE::RPCEnvironment::permissions and PVE::AccessControl::roles): root@pam
  has every privilege; along the path the deepest ACL entry wins, a token's own
  entry before its user's before its groups'; ``propagate 0`` applies to that path only;
  NoAccess clears everything. A token without privilege separation (``privsep 0``)
  has its user's privileges; with privsep (``pveum user token add`` defaults to 1) it
  has only what its own ACLs grant, intersected with its user's.
- a failed check is HTTP 403 "Permission check failed (<path>, <priv>)"
  (RPCEnvironment::check / PVE::Exception::raise_perm_exc).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.pvesim.errors import ApiError

log = logging.getLogger("pvesim.access")

ROOT = "root@pam"
_TOKEN_RE = re.compile(r"^(\S+@\S+)!([A-Za-z][A-Za-z0-9.\-_]+)$")
_USER_RE = re.compile(r"^[^\s:/!]+@[A-Za-z][A-Za-z0-9.\-_]+$")

# PVE::AccessControl's $privgroups: category -> (root, admin, user, audit) privileges.
_PRIVGROUPS: dict[str, tuple[list[str], list[str], list[str], list[str]]] = {
    "VM": (
        [],
        ["VM.Config.Disk", "VM.Config.CPU", "VM.Config.Memory", "VM.Config.Network",
         "VM.Config.HWType", "VM.Config.Options", "VM.Allocate", "VM.Clone",
         "VM.GuestAgent.Unrestricted", "VM.Migrate", "VM.Replicate", "VM.Snapshot",
         "VM.Snapshot.Rollback"],
        ["VM.Config.CDROM", "VM.Config.Cloudinit", "VM.Console", "VM.Backup",
         "VM.GuestAgent.FileRead", "VM.GuestAgent.FileSystemMgmt", "VM.GuestAgent.FileWrite",
         "VM.PowerMgmt"],
        ["VM.Audit", "VM.GuestAgent.Audit"],
    ),
    "Sys": (
        ["Sys.PowerMgmt", "Sys.Modify", "Sys.Incoming", "Sys.AccessNetwork"],
        ["Sys.Console", "Sys.Syslog"],
        [],
        ["Sys.Audit"],
    ),
    "Datastore": (
        [],
        ["Datastore.Allocate", "Datastore.AllocateTemplate"],
        ["Datastore.AllocateSpace"],
        ["Datastore.Audit"],
    ),
    "SDN": ([], ["SDN.Allocate", "SDN.Audit"], ["SDN.Use"], ["SDN.Audit"]),
    "User": (["Realm.Allocate"], ["User.Modify", "Group.Allocate", "Realm.AllocateUser"], [], []),
    "Pool": ([], ["Pool.Allocate"], ["Pool.Audit"], ["Pool.Audit"]),
    "Mapping": ([], ["Mapping.Modify"], ["Mapping.Use"], ["Mapping.Audit"]),
}  # fmt: skip


def _builtin_roles() -> tuple[dict[str, frozenset[str]], frozenset[str]]:
    """Give the built-in roles and every valid privilege (AccessControl::create_roles)."""
    valid = {"Permissions.Modify"}
    roles: dict[str, set[str]] = {"NoAccess": set(), "PVEAdmin": set(), "PVEAuditor": set()}
    for cat, (root, admin, user, audit) in _PRIVGROUPS.items():
        valid.update(root + admin + user + audit)
        roles.setdefault(f"PVE{cat}Admin", set()).update(admin + user + audit)
        roles["PVEAdmin"].update(admin + user + audit)
        if user:
            roles[f"PVE{cat}User"] = set(user + audit)
        roles["PVEAuditor"].update(audit)
    roles["PVEAdmin"].discard("Mapping.Modify")
    roles["PVETemplateUser"] = {"VM.Clone", "VM.Audit"}
    roles["Administrator"] = set(valid)
    return {k: frozenset(v) for k, v in roles.items()}, frozenset(valid)


BUILTIN_ROLES, VALID_PRIVS = _builtin_roles()


@dataclass
class UserConfig:
    """What user.cfg says (only the parts privileges depend on)."""

    users: dict[str, bool] = field(default_factory=lambda: {ROOT: True})  # user -> enabled
    tokens: dict[str, bool] = field(default_factory=dict)  # "user@realm!name" -> privsep
    groups: dict[str, set[str]] = field(default_factory=dict)
    roles: dict[str, frozenset[str]] = field(default_factory=lambda: dict(BUILTIN_ROLES))
    # path -> kind ("tokens", "users", "groups") -> name -> role -> propagate
    acl: dict[str, dict[str, dict[str, dict[str, int]]]] = field(default_factory=dict)


def _split_list(text: str) -> list[str]:
    return [x for x in re.split(r"[;, ]+", text.strip()) if x]


def _normalize_path(path: str) -> str | None:
    path = "/" + "/".join(p for p in path.split("/") if p)
    return path if re.fullmatch(r"[A-Za-z0-9_\-/.]+", path) else None


def parse_user_cfg(text: str) -> UserConfig:
    """Give the users, tokens, groups, roles and ACLs of a user.cfg text.

    Lines that PVE would ignore with a warning are ignored here too.
    """
    cfg = UserConfig()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    acl_lines: list[list[str]] = []
    for line in lines:
        data = [d.strip() for d in line.split(":")]
        kind, rest = data[0], data[1:] + [""] * 8
        if kind == "user" and _USER_RE.match(rest[0]):
            cfg.users[rest[0]] = rest[1] not in ("", "0")
        elif kind == "group":
            cfg.groups[rest[0]] = set(_split_list(rest[1]))
        elif kind == "role":
            cfg.roles[rest[0]] = frozenset(p for p in _split_list(rest[1]) if p in VALID_PRIVS)
        elif kind == "acl":
            acl_lines.append(rest)
    for line in lines:  # tokens belong to users, wherever the user line is
        data = [d.strip() for d in line.split(":")] + [""] * 8
        m = _TOKEN_RE.match(data[1]) if data[0] == "token" else None
        if m and m.group(1) in cfg.users:
            cfg.tokens[data[1]] = data[3] not in ("", "0")
    for propagate, pathtxt, uglist, rolelist, *_ in acl_lines:
        path = _normalize_path(pathtxt)
        if path is None:
            continue
        node = cfg.acl.setdefault(path, {"tokens": {}, "users": {}, "groups": {}})
        for role in _split_list(rolelist):
            if role not in cfg.roles:
                continue
            for ug in _split_list(uglist):
                if ug.startswith("@"):
                    where = node["groups"].setdefault(ug[1:], {})
                elif _TOKEN_RE.match(ug):
                    if ug not in cfg.tokens:
                        continue  # "ignore invalid acl token"
                    where = node["tokens"].setdefault(ug, {})
                else:
                    where = node["users"].setdefault(ug, {})
                where[role] = 1 if propagate not in ("", "0") else 0
    return cfg


def read_token_secrets(root: Path) -> dict[str, str]:
    """Give ``{tokenid: secret}`` from ``<root>/priv/token.cfg`` (none if it is missing)."""
    try:
        text = (root / "priv" / "token.cfg").read_text()
    except FileNotFoundError:
        return {}
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = parts[1]
    return out


def _roles(cfg: UserConfig, ident: str, path: str) -> dict[str, int]:
    """Give role -> propagate for ``ident`` (user or token) on ``path`` (AccessControl::roles)."""
    roles: dict[str, int] = {}
    parts = [""] if path == "/" else path.split("/")
    current = ""
    for index, part in enumerate(parts):
        current = "/" if index == 0 else (current.rstrip("/") + "/" + part)
        final = index == len(parts) - 1
        node = cfg.acl.get(current)
        if node is None:
            continue
        found: dict[str, int] | None = None
        for kind in ("tokens", "users"):
            entry = node[kind].get(ident)
            if entry:
                applied = {r: p for r, p in entry.items() if final or p}
                if applied:
                    found = applied
                    break
        if found is None:
            group_roles: dict[str, int] = {}
            for group, entry in node["groups"].items():
                if ident in cfg.groups.get(group, set()):
                    group_roles.update({r: p for r, p in entry.items() if final or p})
            found = group_roles or None
        if found is not None:
            roles = found  # a deeper entry overrides what the path above gave
    if "NoAccess" in roles:
        return {"NoAccess": roles["NoAccess"]}
    return roles


def _privs(cfg: UserConfig, ident: str, path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for role, propagate in _roles(cfg, ident, path).items():
        for priv in cfg.roles.get(role, frozenset()):
            out[priv] = out.get(priv, 0) or propagate
    return out


def permissions(cfg: UserConfig, ident: str, path: str) -> dict[str, int]:
    """Give privilege -> propagate flag of ``ident`` on ``path`` (RPCEnvironment::permissions)."""
    if ident == ROOT:
        return {p: 1 for p in VALID_PRIVS}
    m = _TOKEN_RE.match(ident)
    if m is None:
        return _privs(cfg, ident, path) if cfg.users.get(ident) else {}
    user = m.group(1)
    if ident not in cfg.tokens:
        return {}
    user_privs = permissions(cfg, user, path)
    if not cfg.tokens[ident]:
        return user_privs
    own = _privs(cfg, ident, path)
    return {p: (user_privs[p] and v) for p, v in own.items() if p in user_privs}


def effective_permissions(cfg: UserConfig, ident: str) -> dict[str, dict[str, int]]:
    """Give path -> privileges for the top paths and every ACL path
    (RPCEnvironment::get_effective_permissions); paths without privileges are left out.
    """
    paths = {"/", "/access", "/access/groups", "/nodes", "/pool", "/sdn", "/storage", "/vms"}
    paths.update(cfg.acl)
    out = {}
    for path in sorted(paths):
        privs = permissions(cfg, ident, path)
        if privs:
            out[path] = privs
    return out


class Access:
    """Authentication and permission checks against the config root's user.cfg.

    ``extra_tokens`` (the lab's token file) are accepted as secrets beside
    ``priv/token.cfg``; either way the token must be listed in user.cfg.
    """

    def __init__(self, root: Path, extra_tokens: dict[str, str] | None = None) -> None:
        self.root = root
        self.extra_tokens = dict(extra_tokens or {})

    def config(self) -> UserConfig:
        """Give user.cfg as it is now (pmxcfs: re-read on every request)."""
        try:
            return parse_user_cfg((self.root / "user.cfg").read_text())
        except FileNotFoundError:
            return UserConfig()

    def authenticate_token(self, ident: str, secret: str) -> str:
        """Give the token id if ``ident``/``secret`` is a valid, listed, enabled API token.

        Raises ApiError 401 "Authentication failed!" otherwise, with the reason pveproxy
        logs (PVE::HTTPServer::auth_handler).
        """
        import hmac

        cfg = self.config()
        m = _TOKEN_RE.match(ident)
        why = None
        if m is None:
            why = "no tokenid specified"
        elif not cfg.users.get(m.group(1)):
            why = f"user '{m.group(1)}' does not exist or is disabled"
        elif ident not in cfg.tokens:
            why = f"no such token '{m.group(2)}' for user '{m.group(1)}'"
        else:
            expected = read_token_secrets(self.root).get(ident) or self.extra_tokens.get(ident)
            if expected is None or not hmac.compare_digest(expected, secret):
                why = "invalid token value!"
        if why is not None:
            log.warning("authentication failure: %s", why)  # what pveproxy logs
            raise ApiError(401, "Authentication failed!")
        return ident

    def permissions(self, ident: str, path: str) -> dict[str, int]:
        """Give privilege -> propagate of ``ident`` on ``path``."""
        return permissions(self.config(), ident, path)

    def allowed(self, ident: str, path: str, privs: list[str], *, any_of: bool = False) -> bool:
        """Tell whether ``ident`` has all (or, ``any_of``, one) of ``privs`` on ``path``."""
        have = self.permissions(ident, path)
        hits = [p in have for p in privs]
        return any(hits) if any_of else all(hits)

    def check(self, ident: str, path: str, privs: list[str], *, any_of: bool = False) -> None:
        """Raise ApiError 403 naming the path and privilege unless ``ident`` has them."""
        have = self.permissions(ident, path)
        if any_of:
            if not any(p in have for p in privs):
                raise ApiError(403, f"Permission check failed ({path}, {'|'.join(privs)})")
            return
        for priv in privs:
            if priv not in have:
                raise ApiError(403, f"Permission check failed ({path}, {priv})")
