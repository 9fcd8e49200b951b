"""``site init``, ``site status`` and ``site token create|import``.

``site init`` does, idempotently, what the Ceph and Proxmox docs have the admin type:
it records this site and its peer in ``pve-mirror.cfg``, copies the peer's Ceph and
API credentials under ``<root>/priv/pve-mirror/`` (0600), puts every pool of the RBD
storages in ``image`` mirroring mode on both sites, creates the rbd-mirror daemon
users with the documented caps, pairs the pools with a bootstrap token (the token
holds a key: it goes from one cluster to the other in memory and is never printed),
and checks that an rbd-mirror daemon runs on each site. Before anything else it checks
each configured PVE API: it must answer and its token must have the privileges
failover needs (pve_mirror.actions.tokencheck); otherwise nothing is changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pve_mirror.actions import tokencheck
from pve_mirror.actions.context import SiteContext
from pve_mirror.ceph import pool
from pve_mirror.ceph.cluster import Cluster
from pve_mirror.engine.plan import Plan, Step, step
from pve_mirror.errors import ConfigError, NotFoundError, PveMirrorError
from pve_mirror.files import write_atomic
from pve_mirror.pve.root import ConfigRoot
from pve_mirror.pve.siteconfig import PRIV_DIR, SiteConfig, load_site_config
from pve_mirror.pve.storage import RbdStorage

DAEMON_CAPS = ["mon", "profile rbd-mirror", "osd", "profile rbd"]
DAEMON_HOWTO = (
    "no rbd-mirror daemon runs on {site}: install it there as the Proxmox wiki describes "
    "(apt install rbd-mirror; ceph auth get-or-create client.rbd-mirror.$(hostname) "
    "mon 'profile rbd-mirror' osd 'profile rbd' > /etc/ceph/ceph.client.rbd-mirror.$(hostname)"
    ".keyring; systemctl enable --now ceph-rbd-mirror@rbd-mirror.$(hostname).service)"
)


@dataclass
class InitOptions:
    """What ``site init`` was given; None keeps what pve-mirror.cfg already says."""

    name: str | None = None
    peer: str | None = None
    api_url: str | None = None
    api_token: str | None = None
    api_secret_file: Path | None = None
    api_ca: Path | None = None
    node: str | None = None
    peer_ceph_conf: Path | None = None
    peer_keyring: Path | None = None
    peer_ceph_user: str | None = None
    peer_api_url: str | None = None
    peer_api_token: str | None = None
    peer_api_secret_file: Path | None = None
    peer_api_ca: Path | None = None
    peer_ssh: str | None = None
    peer_ssh_port: int | None = None
    peer_ssh_key: Path | None = None
    peer_known_hosts: Path | None = None
    peer_node: str | None = None
    peer_root: str | None = None
    pair: bool = True


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` created 0600 (keys and secrets), atomically."""
    write_atomic(path, data, 0o600, dir_mode=0o700)


def _mirrored_pools(ctx: SiteContext) -> list[tuple[RbdStorage, str, str]]:
    """Give (storage, pool, namespace) once per pool of the enabled RBD storages."""
    seen: set[tuple[str, str]] = set()
    out = []
    for storage in ctx.root.storage_config().rbd():
        if storage.disabled or (storage.pool, storage.namespace) in seen:
            continue
        seen.add((storage.pool, storage.namespace))
        out.append((storage, storage.pool, storage.namespace))
    return out


def update_site_config(root: Path, options: InitOptions) -> SiteConfig:
    """Give pve-mirror.cfg with this site and its peer set from ``options`` (not saved).

    Raises ConfigError when the site or peer name is neither given nor recorded.
    """
    site = load_site_config(root, required=False)
    try:
        name = options.name or site.local_name
    except ConfigError as exc:
        raise ConfigError("give this site's name with --name") from exc
    try:
        peer_name = options.peer or site.peer().name
    except ConfigError as exc:
        raise ConfigError("give the peer site's name with --peer") from exc
    if name == peer_name:
        raise ConfigError(f"this site and its peer are both named {name}")
    site_values = {
        "peer": peer_name,
        "api-url": options.api_url,
        "api-token": options.api_token,
        "node": options.node,
    }
    site.set_section("site", name, {k: v for k, v in site_values.items() if v is not None})
    peer_values = {
        "api-url": options.peer_api_url,
        "api-token": options.peer_api_token,
        "ceph-user": options.peer_ceph_user,
        "ssh": options.peer_ssh,
        "ssh-port": str(options.peer_ssh_port) if options.peer_ssh_port else None,
        "node": options.peer_node,
        "root": options.peer_root,
    }
    # Only what was given changes: a rerun of 'site init' keeps the rest.
    site.set_section("peer", peer_name, {k: v for k, v in peer_values.items() if v is not None})
    return site


def plan_init(root: Path, options: InitOptions) -> Plan:
    """Give the plan of ``site init``; raises ConfigError for missing names or files."""
    site = update_site_config(root, options)
    peer_name = site.peer().name
    plan = Plan("site-init", f"set up site {site.local_name} paired with {peer_name}")
    for api in tokencheck.targets(site, root, _given_files(options)):
        plan.add(
            step(
                "check-api",
                0,
                f"api:{api.side}",
                "site",
                f"check {api.site}'s PVE API ({api.endpoint.url}) and what its token "
                f"{api.endpoint.token_id} may do",
                mutates=False,
                side=api.side,
            )
        )
    plan.add(
        step(
            "write-config",
            1,
            "pve-mirror.cfg",
            "site",
            f"record site {site.local_name} and peer {peer_name} in pve-mirror.cfg",
        )
    )
    files = site.peer().files(root)
    own = root / PRIV_DIR
    for source, target in (
        (options.api_secret_file, own / f"{site.local_name}.token"),
        (options.api_ca, own / f"{site.local_name}.ca.pem"),
        (options.peer_ceph_conf, files["ceph-conf"]),
        (options.peer_keyring, files["keyring"]),
        (options.peer_api_secret_file, files["api-secret"]),
        (options.peer_api_ca, files["api-ca"]),
        (options.peer_ssh_key, files["ssh-key"]),
        (options.peer_known_hosts, files["known-hosts"]),
    ):
        if source is None:
            continue
        if not source.is_file():
            raise ConfigError("no such file", str(source))
        plan.add(
            step(
                "install-file",
                1,
                str(target),
                "site",
                f"copy {source} to {target} (0600)",
                source=str(source),
                target=str(target),
            )
        )
    ctx = SiteContext(ConfigRoot(root), site)
    for storage, pool_name, namespace in _mirrored_pools(ctx):
        where = f"{pool_name}/{namespace}" if namespace else pool_name
        for side in ("local", "peer"):
            plan.add(
                step(
                    "pool-mode",
                    2,
                    f"{side}:{where}",
                    "site",
                    f"put pool {where} on the {side} site in image mirroring mode",
                    side=side,
                    storage=storage.storeid,
                    pool=pool_name,
                    namespace=namespace,
                )
            )
        if not namespace:
            plan.add(
                step(
                    "pair",
                    4,
                    where,
                    "site",
                    f"pair pool {where} with {peer_name} (bootstrap token, rx-tx)",
                    storage=storage.storeid,
                    pool=pool_name,
                )
            )
    for side in ("local", "peer"):
        plan.add(
            step(
                "site-name",
                2,
                side,
                "site",
                f"set the mirror site name on the {side} site",
                side=side,
            )
        )
        plan.add(
            step(
                "daemon-user",
                3,
                side,
                "site",
                f"create the rbd-mirror daemon user on the {side} site "
                "(mon 'profile rbd-mirror' osd 'profile rbd')",
                side=side,
            )
        )
        plan.add(
            step(
                "check-daemon",
                5,
                side,
                "site",
                f"check that an rbd-mirror daemon runs on the {side} site",
                mutates=False,
                side=side,
            )
        )
    return plan


def _given_files(options: InitOptions) -> dict[str, tuple[Path | None, Path | None]]:
    """Give the secret and CA files given on the command line, per side (not yet copied)."""
    return {
        "local": (options.api_secret_file, options.api_ca),
        "peer": (options.peer_api_secret_file, options.peer_api_ca),
    }


class InitSteps:
    """The functions behind the steps of ``site init``."""

    def __init__(self, root: Path, options: InitOptions) -> None:
        self.root = root
        self.options = options
        self.ctx: SiteContext | None = None

    def table(self) -> dict[str, Any]:
        """Give kind -> function."""
        return {
            "check-api": self.check_api,
            "write-config": self.write_config,
            "install-file": self.install_file,
            "pool-mode": self.pool_mode,
            "site-name": self.site_name,
            "daemon-user": self.daemon_user,
            "pair": self.pair,
            "check-daemon": self.check_daemon,
        }

    def context(self) -> SiteContext:
        """Give the site context, loaded after the config was written."""
        if self.ctx is None:
            self.ctx = SiteContext.load(self.root)
        return self.ctx

    def _cluster(self, item: Step) -> Cluster:
        if item.param("side") == "peer":
            return self.context().peer()
        return self._storage_cluster(item.param("storage"))

    def _storage_cluster(self, storeid: str) -> Cluster:
        ctx = self.context()
        storage = ctx.root.storage_config().get(storeid)
        if not isinstance(storage, RbdStorage):
            raise ConfigError(f"storage {storeid} is not an RBD storage")
        return ctx.local(storage)

    def _any_local(self) -> Cluster:
        ctx = self.context()
        storages = [s for s in ctx.root.storage_config().rbd() if not s.disabled]
        if not storages:
            raise NotFoundError(f"no enabled RBD storage in {self.root}/storage.cfg")
        return ctx.local(storages[0])

    def _side(self, item: Step) -> Cluster:
        return self.context().peer() if item.param("side") == "peer" else self._any_local()

    def check_api(self, item: Step) -> str:
        """Check one API and its token (see tokencheck); raises PveAuthError naming what
        the token lacks."""
        site = update_site_config(self.root, self.options)
        for target in tokencheck.targets(site, self.root, _given_files(self.options)):
            if target.side == item.param("side"):
                return tokencheck.check(target)
        return "no API configured"

    def write_config(self, item: Step) -> str:
        site = update_site_config(self.root, self.options)
        site.save()
        return f"wrote {site.path}"

    def install_file(self, item: Step) -> str:
        source, target = Path(item.param("source")), Path(item.param("target"))
        if target.exists() and target.read_bytes() == source.read_bytes():
            return "already in place"
        write_private(target, source.read_bytes())
        return "installed"

    def pool_mode(self, item: Step) -> str:
        return pool.enable_image_mode(
            self._cluster(item), item.param("pool"), item.param("namespace")
        )

    def site_name(self, item: Step) -> str:
        ctx = self.context()
        name = ctx.site.peer().name if item.param("side") == "peer" else ctx.site.local_name
        return pool.set_site_name(self._side(item), name)

    def daemon_user(self, item: Step) -> str:
        ctx = self.context()
        side_name = ctx.site.peer().name if item.param("side") == "peer" else ctx.site.local_name
        entity = f"client.rbd-mirror.{side_name}"
        cluster = self._side(item)
        keyring = cluster.mon_command(
            {"prefix": "auth get-or-create", "entity": entity, "caps": DAEMON_CAPS},
            f"create {entity}",
        )
        if item.param("side") == "local":
            target = self.root / PRIV_DIR / f"{entity}.keyring"
            write_private(target, keyring.encode())
            return f"{entity} ready, keyring in {target}"
        return f"{entity} ready on {side_name} (install its keyring there)"

    def pair(self, item: Step) -> str:
        ctx = self.context()
        local = self._storage_cluster(item.param("storage"))
        peer = ctx.peer()
        pool_name = item.param("pool")
        local_peers = {p["site_name"] for p in pool.peers(local, pool_name)}
        remote_peers = {p["site_name"] for p in pool.peers(peer, pool_name)}
        if ctx.site.peer().name in local_peers and ctx.site.local_name in remote_peers:
            return "already paired"
        token = pool.bootstrap_create(local, pool_name)
        pool.bootstrap_import(peer, pool_name, token)
        return "paired (rx-tx)"

    def check_daemon(self, item: Step) -> str:
        ctx = self.context()
        name = ctx.site.peer().name if item.param("side") == "peer" else ctx.site.local_name
        daemons = pool.mirror_daemons(self._side(item))
        if not daemons:
            raise NotFoundError(DAEMON_HOWTO.format(site=name))
        bad = [d for d in daemons if d["health"] != "OK"]
        if bad:
            return f"{len(daemons)} daemon(s), not healthy: {'; '.join(bad[0]['callouts'])}"
        return f"{len(daemons)} daemon(s) healthy"


def site_status(ctx: SiteContext) -> dict[str, Any]:
    """Give both sites' pools (mode, peers, image health), daemons, and PVE APIs (does
    each answer, what does its token lack).

    A site that cannot be reached is reported with its error, not raised.
    """
    out: dict[str, Any] = {"site": ctx.site.local_name, "peer": ctx.site.peer().name, "sites": []}
    try:
        out["apis"] = [tokencheck.report(t) for t in tokencheck.targets(ctx.site, ctx.root.path)]
    except ConfigError as exc:
        out["apis"] = [{"side": "?", "site": "?", "url": "", "token": "", "version": None,
                        "problems": [str(exc)]}]  # fmt: skip
    if ctx.site.local_api(ctx.root.path) is None:
        out["apis"].insert(0, {"side": "local", "site": ctx.site.local_name, "url": "pvesh",
                               "token": "root@pam", "version": None, "problems": []})  # fmt: skip
    pools = _mirrored_pools(ctx)
    sides: list[tuple[str, Any]] = [
        (ctx.site.local_name, lambda s: ctx.local(s)),
        (ctx.site.peer().name, lambda _s: ctx.peer()),
    ]
    for name, open_cluster in sides:
        entry: dict[str, Any] = {"name": name, "pools": [], "daemons": [], "error": None}
        try:
            cluster = None
            for storage, pool_name, namespace in pools:
                cluster = open_cluster(storage)
                summary = cluster.rbd.mirror_image_status_summary(
                    cluster.ioctx(pool_name, namespace)
                )
                entry["pools"].append(
                    {
                        "pool": f"{pool_name}/{namespace}" if namespace else pool_name,
                        "mode": pool.pool_mode(cluster, pool_name, namespace),
                        "peers": pool.peers(cluster, pool_name),
                        "images": {pool.STATUS_STATES.get(k, str(k)): v for k, v in summary},
                    }
                )
            if cluster is not None:
                entry["site_name"] = pool.site_name(cluster)
                entry["daemons"] = pool.mirror_daemons(cluster)
        except PveMirrorError as exc:
            entry["error"] = str(exc)
        out["sites"].append(entry)
    return out


def render_site_status(data: dict[str, Any]) -> str:
    """Give the human form of :func:`site_status`."""
    lines = [f"site {data['site']} (peer {data['peer']})"]
    for api in data.get("apis", []):
        head = f"PVE API of {api['site']}: {api['url']}"
        if api["url"] == "pvesh":
            lines.append(f"{head} (root@pam on this node)")
            continue
        version = f", PVE {api['version']}" if api["version"] else ""
        state = "ERROR" if api["problems"] else "OK"
        lines.append(f"{head}{version}, token {api['token']}: {state}")
        lines += [f"  {p}" for p in api["problems"]]
    for site in data["sites"]:
        lines.append(f"{site['name']}:")
        if site["error"]:
            lines.append(f"  unreachable: {site['error']}")
            continue
        for p in site["pools"]:
            peers = ", ".join(f"{x['site_name']} ({x['direction']})" for x in p["peers"]) or "none"
            images = ", ".join(f"{k} {v}" for k, v in p["images"].items()) or "no images"
            lines.append(f"  pool {p['pool']}: mode {p['mode']}, peers {peers}; {images}")
        if not site["daemons"]:
            lines.append("  rbd-mirror: no daemon running")
        for d in site["daemons"]:
            lines.append(f"  rbd-mirror {d['id']} on {d['host']}: {d['health']}")
            lines += [f"    {c}" for c in d["callouts"]]
    return "\n".join(lines)


def token_create(ctx: SiteContext, pool_name: str, out: Path) -> str:
    """Write a bootstrap token for ``pool_name`` to ``out`` (0600); give the path.

    The token holds a key: it is never printed.
    """
    storages = [s for s in ctx.root.storage_config().rbd() if s.pool == pool_name]
    if not storages:
        raise NotFoundError(f"no RBD storage uses pool {pool_name}")
    cluster = ctx.local(storages[0])
    pool.set_site_name(cluster, ctx.site.local_name)
    write_private(out, pool.bootstrap_create(cluster, pool_name).encode())
    return str(out)


def token_import(ctx: SiteContext, pool_name: str, token_file: Path) -> str:
    """Import the peer's bootstrap token from ``token_file`` into ``pool_name`` (rx-tx)."""
    storages = [s for s in ctx.root.storage_config().rbd() if s.pool == pool_name]
    if not storages:
        raise NotFoundError(f"no RBD storage uses pool {pool_name}")
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the token: {exc.strerror}", str(token_file)) from exc
    cluster = ctx.local(storages[0])
    pool.set_site_name(cluster, ctx.site.local_name)
    pool.enable_image_mode(cluster, pool_name)
    return pool.bootstrap_import(cluster, pool_name, token)
