"""HTTPS front of the simulator: /api2/json paths, API-token auth, PVE's answer shape.

Like pveproxy, an error puts its message in the HTTP status line (proxmoxer shows
that as the exception's content) and answers ``{"data": null}`` plus ``errors``
for parameter problems. An API token is checked as pveproxy checks it
(PVE::HTTPServer::auth_handler -> PVE::AccessControl::verify_token): listed in
user.cfg, secret in priv/token.cfg (or the lab's token file), else 401
"Authentication failed!".

The lab's ``pvesh`` (tests/lab/pvesh.py) stands for root@pam on a node, as the real
pvesh does (it calls the API handlers in-process, no login): it sends
``Authorization: PVESimRoot=<secret>`` with the secret the simulator wrote to its
scratch directory (0600, root only).
"""

from __future__ import annotations

import hmac
import json
import logging
import ssl
import subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from tests.lab.pvesim.access import ROOT
from tests.lab.pvesim.api import ApiError, Request, Simulator

log = logging.getLogger("pvesim.http")

API_PREFIX = "/api2/json"
MAX_BODY = 1024 * 1024


def load_tokens(path: Path) -> dict[str, str]:
    """Give ``{"user@realm!tokenid": secret}`` from a token file (``id=secret`` per line)."""
    tokens: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        ident, sep, secret = line.partition("=")
        if not sep or "!" not in ident or "@" not in ident:
            raise ValueError(f"{path}: malformed token line (want user@realm!tokenid=secret)")
        tokens[ident] = secret
    return tokens


def ensure_certificate(scratch: Path, common_name: str) -> tuple[Path, Path]:
    """Give (cert, key) in ``scratch``, making a self-signed pair with openssl if missing.

    The certificate names 127.0.0.1 and localhost, so it can serve as its own CA file.
    Raises subprocess.CalledProcessError if openssl fails.
    """
    cert, key = scratch / "pve-ssl.pem", scratch / "pve-ssl.key"
    if cert.exists() and key.exists():
        return cert, key
    scratch.mkdir(parents=True, exist_ok=True)
    subject = f"/OU=PVE Cluster Node/O=Proxmox Virtual Environment/CN={common_name}"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "3650", "-subj", subject,
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


class PveHTTPServer(ThreadingHTTPServer):
    """A threading HTTPS server holding the simulator and the accepted tokens."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], simulator: Simulator, tokens: dict[str, str],
        context: ssl.SSLContext | None, root_secret: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(address, PveRequestHandler)
        self.simulator = simulator
        simulator.access.extra_tokens.update(tokens)
        self.root_secret = root_secret
        self.context = context

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Do the TLS handshake in the request's thread, then serve it."""
        if self.context is not None:
            try:
                request = self.context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.info("TLS handshake with %s failed: %s", client_address, exc)
                return
        try:
            super().finish_request(request, client_address)
        finally:
            if self.context is not None:
                request.close()


class PveRequestHandler(BaseHTTPRequestHandler):
    """One HTTP request: authenticate, dispatch to the simulator, answer as PVE does."""

    server: PveHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "pve-api-daemon/3.0"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def _authenticate(self) -> str:
        header = self.headers.get("Authorization", "")
        if not header:
            if self.headers.get("Cookie", "").find("PVEAuthCookie=") >= 0:
                raise ApiError(401, "invalid ticket")
            raise ApiError(401, "No ticket")
        scheme, _, value = header.partition("=")
        if scheme.strip() == "PVESimRoot":
            secret = self.server.root_secret
            if secret is None or not hmac.compare_digest(secret, value.strip()):
                raise ApiError(401, "Authentication failed!")
            return ROOT
        if scheme.strip() != "PVEAPIToken":
            raise ApiError(401, "invalid authorization header")
        ident, sep, secret = value.strip().partition("=")
        if not sep:
            raise ApiError(401, "Authentication failed!")
        return self.server.simulator.access.authenticate_token(ident, secret)

    def _params(self) -> dict[str, str]:
        query = urlsplit(self.path).query
        params = dict(parse_qsl(query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length", "0") or 0)
        if length > MAX_BODY:
            raise ApiError(413, "request too large")
        if length:
            body = self.rfile.read(length).decode()
            ctype = self.headers.get("Content-Type", "")
            if ctype.startswith("application/json"):
                data = json.loads(body or "{}")
                params.update({k: str(v) for k, v in data.items()})
            else:
                params.update(dict(parse_qsl(body, keep_blank_values=True)))
        return params

    def _handle(self, method: str) -> None:
        status, message = 200, "OK"
        payload: dict[str, Any] = {"data": None}
        try:
            path = unquote(urlsplit(self.path).path)
            params = self._params()
            if not path.startswith(API_PREFIX + "/") and path != API_PREFIX:
                raise ApiError(501, f"Method '{method} {path}' not implemented")
            user = self._authenticate()
            data = self.server.simulator.dispatch(
                Request(method=method, path=path[len(API_PREFIX) :], params=params, user=user)
            )
            payload = {"data": data}
        except ApiError as exc:
            status = exc.status
            payload = {"data": None}
            if exc.errors:
                payload["errors"] = exc.errors
            message = exc.message
        except Exception:
            log.exception("internal error on %s %s", method, self.path)
            status, message = 500, "internal simulator error"
        body = json.dumps(payload).encode()
        # pveproxy puts the error message into the status line; keep it one latin-1 line
        reason = message.replace("\r", " ").replace("\n", " ")
        self.send_response(status, reason.encode("latin-1", "replace").decode("latin-1"))
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=0")
        self.send_header("Pragma", "no-cache")
        self.end_headers()
        self.wfile.write(body)


def make_context(cert: Path, key: Path) -> ssl.SSLContext:
    """Give a server TLS context for the certificate pair."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx
