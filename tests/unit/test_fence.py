"""Fence notes and peer-lost declarations are trusted in one direction only; the API
and Ceph errors say whether the peer never answered (only that counts as down)."""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from pve_mirror.actions import fence
from pve_mirror.ceph.access import ClusterAccess
from pve_mirror.ceph.cluster import CephUnreachableError, Cluster
from pve_mirror.errors import CephError, ConfigError, PveApiError
from pve_mirror.pve.api import HttpsApi, HttpsEndpoint, PveUnreachableError, connect_failed
from pve_mirror.pve.siteconfig import load_site_config


def test_a_note_written_here_against_the_peer_is_trusted(tmp_path: Path) -> None:
    fence.write_note(tmp_path, "site-a", "site-b", ["VM 100"])
    warnings: list[str] = []
    note = fence.read_fence(tmp_path, "site-a", "site-b", warnings)
    assert note is not None and not warnings
    assert note.guests == ("VM 100",) and note.by == "site-b"
    assert note.since().endswith("UTC")


@pytest.mark.parametrize(
    "content",
    [
        {"fenced": "site-b", "by": "site-a", "at": 1.0},  # the other way round
        {"fenced": "site-a", "by": "site-c", "at": 1.0},  # by another site
        {"fenced": "site-a", "by": "site-b"},  # no date
        ["not", "an", "object"],
    ],
)
def test_a_note_in_another_direction_is_ignored_with_a_warning(
    tmp_path: Path, content: object
) -> None:
    path = fence.note_path(tmp_path, "site-a")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(content))
    warnings: list[str] = []
    assert fence.read_fence(tmp_path, "site-a", "site-b", warnings) is None
    assert len(warnings) == 1 and "ignoring the fence note" in warnings[0]


def test_an_unreadable_note_is_ignored_and_a_missing_one_is_silent(tmp_path: Path) -> None:
    warnings: list[str] = []
    assert fence.read_lost(tmp_path, "site-a", "site-b", warnings) is None
    assert not warnings
    path = fence.lost_path(tmp_path, "site-a")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert fence.read_lost(tmp_path, "site-a", "site-b", warnings) is None
    assert "cannot read it" in warnings[0]


def test_a_peer_lost_declaration_reads_back(tmp_path: Path) -> None:
    fence.write_lost(tmp_path, "site-a", "site-b", "timed out")
    warnings: list[str] = []
    note = fence.read_lost(tmp_path, "site-a", "site-b", warnings)
    assert note is not None and not warnings
    # a declaration made at site-a about site-b means nothing at site-b
    assert fence.read_lost(tmp_path, "site-a", "site-c", warnings) is None and warnings


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def endpoint(tmp_path: Path, port: int) -> HttpsEndpoint:
    secret = tmp_path / "secret"
    secret.write_text("x")
    return HttpsEndpoint(f"https://127.0.0.1:{port}", "root@pam!t", secret, timeout=3)


def test_a_refused_connection_is_unreachable(tmp_path: Path) -> None:
    api = HttpsApi(endpoint(tmp_path, closed_port()))
    with pytest.raises(PveUnreachableError, match="cannot reach"):
        api.get("/version")


def test_a_server_that_hangs_up_is_not_unreachable(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def hang_up() -> None:
            with contextlib.suppress(OSError):
                while True:
                    conn, _ = server.accept()
                    conn.close()

        threading.Thread(target=hang_up, daemon=True).start()
        api = HttpsApi(endpoint(tmp_path, port))
        # something listens and closes the TLS handshake: a site that is up
        with pytest.raises(PveApiError) as caught:
            api.get("/version")
    assert not isinstance(caught.value, PveUnreachableError), caught.value


def test_a_peer_that_accepts_and_never_answers_times_out(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()  # the kernel completes the connect; nobody reads
        api = HttpsApi(endpoint(tmp_path, server.getsockname()[1]))
        started = time.monotonic()
        with pytest.raises(PveApiError) as caught:
            api.get("/version")
        assert time.monotonic() - started < 30
    # it connected: a hung API is not a site that is down
    assert not isinstance(caught.value, PveUnreachableError), caught.value


def test_a_missing_token_file_is_a_config_error(tmp_path: Path) -> None:
    ep = HttpsEndpoint(f"https://127.0.0.1:{closed_port()}", "root@pam!t", tmp_path / "none")
    with pytest.raises(ConfigError, match="token secret"):
        HttpsApi(ep).get("/version")


def test_ceph_monitors_that_do_not_answer_are_unreachable(tmp_path: Path) -> None:
    conf = tmp_path / "ceph.conf"
    conf.write_text(f"[global]\nmon_host = 127.0.0.1:{closed_port()}\n")
    access = ClusterAccess("peer", "admin", str(conf), (("keyring", "/dev/null"),))
    with pytest.raises(CephUnreachableError, match="cannot connect"):
        Cluster(access.with_mount_timeout(2)).connect(2)


def test_a_missing_ceph_conf_is_not_unreachable(tmp_path: Path) -> None:
    access = ClusterAccess("peer", "admin", str(tmp_path / "none.conf"), ())
    with pytest.raises(CephError) as caught:
        Cluster(access).connect(2)
    assert not isinstance(caught.value, CephUnreachableError), caught.value


def test_status_names_the_fence_and_who_set_it(tmp_path: Path) -> None:
    cfg = load_site_config(tmp_path, required=False)
    cfg.set_section("site", "site-b", {"peer": "site-a"})
    cfg.set_section("peer", "site-a", {"ssh": "root@127.0.0.1"})
    assert fence.status_lines(tmp_path, cfg) == []
    fence.write_note(tmp_path, "site-a", "site-b", ["VM 100"])
    fence.write_lost(tmp_path, "site-a", "site-b", "timed out")
    lines = fence.status_lines(tmp_path, cfg)
    assert len(lines) == 2, lines
    assert lines[0].startswith("site-a is fenced by site-b since ") and "VM 100" in lines[0]
    assert lines[1].startswith("site-a declared lost by site-b since ")


def test_only_a_failed_connect_counts_as_unreachable() -> None:
    import requests

    def wrapped(cause: BaseException) -> requests.exceptions.ConnectionError:
        try:
            try:
                raise cause
            except OSError as exc:
                raise requests.exceptions.ConnectionError("wrapped") from exc
        except requests.exceptions.ConnectionError as outer:
            return outer

    assert connect_failed(wrapped(OSError(errno.EHOSTUNREACH, "No route to host")))
    assert connect_failed(wrapped(OSError(errno.ENETUNREACH, "Network is unreachable")))
    assert connect_failed(requests.exceptions.ConnectTimeout("connect timeout"))
    assert not connect_failed(wrapped(OSError(errno.ECONNRESET, "reset by peer")))
    assert not connect_failed(wrapped(socket.gaierror(-2, "Name or service not known")))
    assert not connect_failed(requests.exceptions.ReadTimeout("read timeout"))
