"""Both lab sites set up the way an admin sets up pve-mirror, for the demo, the
integration tests and the benchmarks: PVE config roots and API simulators, the lab
sshd for config sync, ``pve-mirror site init`` on each site (its own API, the
peer's API, Ceph and SSH) and ``pve-mirror hook install`` on each site.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pve_mirror.cli.main import main
from tests.lab import sshd
from tests.lab.ceph_lab import CephLab
from tests.lab.pve_site import REPO_ROOT, PveSite, pve_sites_for


@dataclass
class CliResult:
    """What one in-process run of ``pve-mirror`` gave."""

    rc: int
    out: str
    err: str

    def json(self) -> Any:
        """Give stdout parsed as JSON."""
        return json.loads(self.out)


def run_cli(root: Path, *args: str) -> CliResult:
    """Run ``pve-mirror --root ROOT ARGS...`` in this process; never raises SystemExit."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(["--root", str(root), *args])
        except SystemExit as exc:
            rc = int(exc.code or 0)
    return CliResult(rc, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def pvesh_of(site: PveSite) -> Iterator[None]:
    """Put ``site``'s lab pvesh first on PATH for the block (this process)."""
    old = os.environ.get("PATH")
    os.environ["PATH"] = site.env_with_pvesh()["PATH"]
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = old


def run_cli_on_node(site: PveSite, node: str, *args: str) -> CliResult:
    """Run ``pve-mirror ARGS...`` as if on ``node`` of ``site``, with its pvesh on PATH.

    The first node is this machine (in-process). Another node runs the CLI in a
    mount namespace of its own where its node-local ``local`` storage is bind-mounted
    over the storage's path, with ``PVE_MIRROR_NODE`` naming it: the product code
    writes to the path storage.cfg gives, as on a real node.
    """
    if node == site.node:
        with pvesh_of(site):
            return run_cli(site.root, *args)
    there = site.node_path(node, site.local_path)
    there.mkdir(parents=True, exist_ok=True)
    script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            str(there), str(site.local_path),
            sys.executable, "-m", "pve_mirror", "--root", str(site.root), *args]  # fmt: skip
    env = site.env_with_pvesh(dict(os.environ, PVE_MIRROR_NODE=node))
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, check=False, env=env, cwd=REPO_ROOT
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def init_args(site: PveSite, peer: PveSite, ssh: sshd.SshEndpoint | None = None) -> list[str]:
    """Give the ``site init`` arguments that pair ``site`` with ``peer`` in the lab."""
    args = [
        "site", "init", "--name", site.name, "--peer", peer.name,
        "--node", site.node,
        "--api-url", site.api_url.removesuffix("/api2/json"),
        "--api-token", site.token,
        "--api-secret-file", str(site.token_file),
        "--peer-ceph-conf", str(peer.ceph.conf),
        "--peer-keyring", str(peer.ceph.admin_keyring),
        "--peer-api-url", peer.api_url.removesuffix("/api2/json"),
        "--peer-api-token", peer.token,
        "--peer-api-secret-file", str(peer.token_file),
        "--peer-node", peer.node,
        "--peer-root", str(peer.root),
    ]  # fmt: skip
    # The simulator writes its certificate when it starts.
    for who, flag in ((site, "--api-ca"), (peer, "--peer-api-ca")):
        if who.ca_cert.is_file() and who.ca_cert.stat().st_size:
            args += [flag, str(who.ca_cert)]
    if ssh is not None:
        args += [
            "--peer-ssh", ssh.target, "--peer-ssh-port", str(ssh.port),
            "--peer-ssh-key", str(ssh.key_path), "--peer-known-hosts", str(ssh.known_hosts),
        ]  # fmt: skip
    return args


@dataclass
class DrLab:
    """The Ceph lab with both PVE sites running and paired for pve-mirror."""

    lab: CephLab
    a: PveSite
    b: PveSite
    ssh: sshd.SshEndpoint

    def cli(self, site: PveSite, *args: str) -> CliResult:
        """Run the CLI against ``site``'s config root (its pvesh on PATH, as on its node)."""
        with pvesh_of(site):
            return run_cli(site.root, *args)

    def site(self, name: str) -> PveSite:
        """Give the PVE site named ``site-a`` or ``site-b``."""
        return self.a if name == "site-a" else self.b

    def peer_of(self, site: PveSite) -> PveSite:
        """Give the other site."""
        return self.b if site is self.a else self.a

    def init(self, site: PveSite) -> CliResult:
        """Run ``site init`` on ``site`` (idempotent)."""
        return run_cli(site.root, *init_args(site, self.peer_of(site), self.ssh))

    def stop(self) -> None:
        """Stop both simulators and the sshd (the Ceph lab stays as it is)."""
        for site in (self.a, self.b):
            site.stop()
        sshd.stop(self.lab.root / "sshd")


def setup_dr(lab: CephLab) -> DrLab:
    """Set both sites up on an up lab; raise RuntimeError naming the step that failed."""
    pve = pve_sites_for(lab.sites)
    a, b = pve["site-a"], pve["site-b"]
    for site in (a, b):
        site.build()
        if not site.running():
            site.start()
    dr = DrLab(lab, a, b, sshd.start(lab.root / "sshd"))
    for site in (a, b):
        result = run_cli(site.root, *init_args(site, dr.peer_of(site), dr.ssh))
        if result.rc != 0:
            raise RuntimeError(f"{site.name}: pve-mirror site init: {result.err}")
        # as an admin does on every node: the snippet lives on node-local storage
        # Each run writes its node's snippet and asks about the others', so an earlier
        # run may still see an older snippet elsewhere: only the last one must pass.
        for node in reversed(site.nodes):
            result = run_cli_on_node(site, node, "hook", "install")
        if result.rc != 0:
            raise RuntimeError(f"{site.name} {node}: pve-mirror hook install: {result.err}")
    return dr
