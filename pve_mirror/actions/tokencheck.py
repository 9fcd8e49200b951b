"""The API checks of ``site init`` and ``site status``: does each configured PVE API
answer, and may its token do what failover and failback need?

An API token with privilege separation (``pveum user token add`` makes one unless
``--privsep 0``) has no privileges until ACLs grant them, and PVE does not say so
where it matters: /cluster/resources answers 200 with no guests. So the token's
effective privileges are read (GET /access/permissions) and every missing one is
named, with what it is needed for (pve_mirror.pve.privileges).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pve_mirror.errors import ConfigError, PveApiError
from pve_mirror.pve import privileges
from pve_mirror.pve.api import HttpsApi, HttpsEndpoint, PveAuthError
from pve_mirror.pve.siteconfig import SiteConfig


@dataclasses.dataclass(frozen=True)
class ApiTarget:
    """One configured API: whose (``local``/``peer``), the site's name, how to reach it."""

    side: str
    site: str
    endpoint: HttpsEndpoint


def targets(
    site: SiteConfig,
    root: Path,
    overrides: dict[str, tuple[Path | None, Path | None]] | None = None,
) -> list[ApiTarget]:
    """Give the https APIs ``site`` configures: this site's (if any) and the peer's (if any).

    ``overrides`` maps ``local``/``peer`` to (secret file, CA file) to use instead of
    the installed copies (``site init`` checks before it installs them). Raises
    ConfigError for a bad URL or token id.
    """
    overrides = overrides or {}
    out = []
    local = site.local_api(root)
    if local is not None:
        out.append(ApiTarget("local", site.local_name, _with(local, overrides.get("local"))))
    peer = site.peer()
    if peer.api_url and peer.api_token:
        endpoint = _with(peer.api_endpoint(root), overrides.get("peer"))
        out.append(ApiTarget("peer", peer.name, endpoint))
    return out


def _with(endpoint: HttpsEndpoint, files: tuple[Path | None, Path | None] | None) -> HttpsEndpoint:
    if files is None:
        return endpoint
    secret, ca = files
    return dataclasses.replace(
        endpoint,
        secret_file=secret or endpoint.secret_file,
        ca_file=ca or endpoint.ca_file,
    )


def check(target: ApiTarget) -> str:
    """Check that the API answers and its token has every needed privilege; give a detail.

    Raises PveAuthError naming the missing privileges (or the refused token),
    PveApiError when the API cannot be reached, ConfigError for an unreadable secret.
    """
    api = HttpsApi(target.endpoint, target.site)
    version = api.get("/version") or {}
    token = target.endpoint.token_id
    privileges.require(api, privileges.site_needs(), f"{target.site}'s API token {token}")
    needed = sorted({p for n in privileges.site_needs() for p in n.privs})
    return f"PVE {version.get('version', '?')}; token {token} has {', '.join(needed)}"


def report(target: ApiTarget) -> dict[str, Any]:
    """Give what ``site status`` shows of one API: version, token, problems (never raises)."""
    entry: dict[str, Any] = {
        "side": target.side,
        "site": target.site,
        "url": target.endpoint.url,
        "token": target.endpoint.token_id,
        "version": None,
        "problems": [],
    }
    api = HttpsApi(target.endpoint, target.site)
    try:
        entry["version"] = (api.get("/version") or {}).get("version")
    except (PveAuthError, ConfigError) as exc:
        entry["problems"].append(str(exc))
        return entry
    except PveApiError as exc:
        entry["problems"].append(f"does not answer: {exc}")
        return entry
    entry["problems"] = privileges.check(
        api, privileges.site_needs(), f"API token {target.endpoint.token_id}"
    )
    return entry
