"""What an admin does with ``pveum`` and ``ha-manager`` on a lab site, as file edits.

The simulator reads user.cfg, priv/token.cfg and ha/resources.cfg on every request,
as PVE reads them from pmxcfs, so writing them here is what ``pveum user token add``,
``pveum acl modify`` and ``ha-manager add|set|remove`` leave behind. Formats:
pve-access-control's PVE::AccessControl::write_user_config and PVE::Cluster's
token.cfg; pve-ha-manager's resources.cfg (a section config).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.lab.pvesim.ha import RESOURCES, Section, parse_resources, render_resources

USER_CFG = "user.cfg"
TOKEN_CFG = "priv/token.cfg"


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` by rename (pmxcfs allows it; modes are its own)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.rename(path)


def _lines(path: Path) -> list[str]:
    try:
        return [ln for ln in path.read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        return []


def ensure_user(root: Path, user: str = "root@pam") -> None:
    """Make sure user.cfg lists ``user`` (enabled)."""
    lines = _lines(root / USER_CFG)
    if not any(ln.startswith(f"user:{user}:") for ln in lines):
        lines.insert(0, f"user:{user}:1:0:::{user.split('@')[0]}@example.invalid:::")
        _replace(root / USER_CFG, "\n".join(lines) + "\n")


def add_token(
    root: Path, user: str, name: str, *, privsep: bool = True, secret: str | None = None
) -> str:
    """Do ``pveum user token add <user> <name> --privsep <0|1>``; give the secret.

    An existing token of that name is replaced (with a new secret unless given).
    """
    ensure_user(root, user)
    token = f"{user}!{name}"
    secret = secret or str(uuid.uuid4())
    lines = [ln for ln in _lines(root / USER_CFG) if not ln.startswith(f"token:{token}:")]
    lines.append(f"token:{token}:0:{1 if privsep else 0}::")
    _replace(root / USER_CFG, "\n".join(lines) + "\n")
    secrets = [ln for ln in _lines(root / TOKEN_CFG) if ln.split()[0] != token]
    secrets.append(f"{token} {secret}")
    _replace(root / TOKEN_CFG, "\n".join(secrets) + "\n")
    return secret


def remove_token(root: Path, token: str) -> None:
    """Do ``pveum user token remove``: its line, its secret and its ACL entries go."""
    lines = [
        ln for ln in _lines(root / USER_CFG)
        if not ln.startswith(f"token:{token}:") and not (
            ln.startswith("acl:") and ln.split(":")[3] == token
        )
    ]  # fmt: skip
    _replace(root / USER_CFG, "\n".join(lines) + "\n")
    secrets = [ln for ln in _lines(root / TOKEN_CFG) if ln.split()[0] != token]
    _replace(root / TOKEN_CFG, "\n".join(secrets) + "\n" if secrets else "")


def set_acl(root: Path, path: str, who: str, roles: str, *, propagate: bool = True) -> None:
    """Do ``pveum acl modify <path> --tokens|--users <who> --roles <roles>``."""
    lines = [
        ln for ln in _lines(root / USER_CFG)
        if not (ln.startswith("acl:") and ln.split(":")[2:4] == [path, who])
    ]  # fmt: skip
    lines.append(f"acl:{1 if propagate else 0}:{path}:{who}:{roles}:")
    _replace(root / USER_CFG, "\n".join(lines) + "\n")


def add_role(root: Path, name: str, privs: list[str]) -> None:
    """Do ``pveum role add <name> --privs <privs>``."""
    lines = [ln for ln in _lines(root / USER_CFG) if not ln.startswith(f"role:{name}:")]
    lines.append(f"role:{name}:{','.join(privs)}:")
    _replace(root / USER_CFG, "\n".join(lines) + "\n")


def ha_resources(root: Path) -> list[Section]:
    """Give resources.cfg's sections."""
    try:
        return parse_resources((root / RESOURCES).read_text())
    except FileNotFoundError:
        return []


def ha_set(root: Path, kind: str, vmid: int, state: str) -> None:
    """Do ``ha-manager add <sid> --state <state>`` or, if it exists, ``ha-manager set``."""
    htype = "vm" if kind == "qemu" else "ct"
    sections = ha_resources(root)
    match = [s for s in sections if (s.type, s.vmid) == (htype, vmid)]
    if match:
        match[0].set("state", state)
    else:
        sections.append(Section(htype, vmid, [("state", state)]))
    _replace(root / RESOURCES, render_resources(sections))


def ha_remove(root: Path, kind: str, vmid: int) -> None:
    """Do ``ha-manager remove <sid>``."""
    htype = "vm" if kind == "qemu" else "ct"
    sections = [s for s in ha_resources(root) if (s.type, s.vmid) != (htype, vmid)]
    _replace(root / RESOURCES, render_resources(sections))
