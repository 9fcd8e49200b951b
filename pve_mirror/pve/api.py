"""The PVE API behind a small contract, with the backend chosen by name.

``pvesh`` talks to the local node through Proxmox's own CLI (bookworm's proxmoxer 1.2
has no ``local`` backend); ``https`` talks to the other site's API with an API token
through proxmoxer. Both give the ``data`` member of PVE's answer.

pvesh is root@pam on its node: it needs no token and may do what only root@pam may
(set a hookscript). A call that starts a worker task runs the task in the foreground
and exits 0 even when the task fails (pve-common's PVE::RESTEnvironment::fork_worker
in the CLI environment), so its answer is only the UPID: the task's outcome is read
from ``/nodes/{node}/tasks/{upid}/status`` like for https.

A refused login (401) or a missing privilege (403) is :class:`PveAuthError`: the API
answered, so it is never taken for a site that is down. Only a connect that timed
out, was refused or found no route is :class:`PveUnreachableError`.
"""

from __future__ import annotations

import errno
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from pve_mirror import execute
from pve_mirror.errors import CommandError, ConfigError, PveApiError


class PveAuthError(PveApiError):
    """The PVE API refused the credentials (HTTP 401) or a privilege (HTTP 403)."""


class PveUnreachableError(PveApiError):
    """The API did not answer: the connection timed out, was refused or had no route.

    Only this may count as "the site is down"; a TLS failure, an HTTP error or an
    answer that cannot be read come from a site that may well be up.
    """

    unreachable = True


# A connect that failed with one of these never reached the API.
_UNREACHABLE_ERRNOS = frozenset(
    {errno.ETIMEDOUT, errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH}
)


def connect_failed(exc: BaseException) -> bool:
    """Tell whether ``exc`` (a requests/urllib3 error) is a connect that timed out, was
    refused or found no route, by walking the exceptions it wraps."""
    import requests

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if (
            isinstance(current, OSError)
            and not isinstance(current, socket.gaierror)
            and current.errno in _UNREACHABLE_ERRNOS
        ):
            return True
        if type(current).__name__ == "ConnectTimeoutError":  # urllib3's, any version
            return True
        nested = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        nested += [a for a in current.args if isinstance(a, BaseException)]
        todo += [n for n in nested if isinstance(n, BaseException)]
    return False


def _bound_requests(session: Any, timeout: float) -> None:
    """Give every request of ``session`` ``timeout`` unless the caller passes one.

    proxmoxer (1.2 and 2.x) calls ``session.request`` without a timeout, so a peer
    that accepts the connection and never answers (a hung pveproxy) would block the
    caller for good; its ``timeout`` only bounds the ticket login.
    """
    send = session.request

    def request(*args: Any, **kwargs: Any) -> Any:
        # requests.Session.request(method, url, params, data, headers, cookies, files,
        # auth, timeout, ...): a ninth positional argument would be the timeout
        if kwargs.get("timeout") is None and len(args) < 9:
            kwargs["timeout"] = timeout
        return send(*args, **kwargs)

    session.request = request


class PveApi(Protocol):
    """What pve-mirror needs of an API: GET, POST and PUT on a path like ``/cluster/resources``."""

    name: str

    def get(self, path: str, /, **params: Any) -> Any:
        """Give the answer's data; raises PveApiError."""
        ...

    def post(self, path: str, /, **params: Any) -> Any:
        """Give the answer's data; raises PveApiError."""
        ...

    def put(self, path: str, /, **params: Any) -> Any:
        """Give the answer's data; raises PveApiError."""
        ...


@dataclass(frozen=True)
class HttpsEndpoint:
    """How to reach a PVE API over HTTPS with an API token (``user@realm!tokenid``)."""

    url: str
    token_id: str
    secret_file: Path
    ca_file: Path | None = None
    verify: bool = True
    timeout: float = 15.0

    def host_port(self) -> tuple[str, int]:
        """Give host and port of the URL; raises ConfigError for a URL that is not https."""
        parts = urlsplit(self.url if "://" in self.url else f"https://{self.url}")
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigError(f"PVE API URL must be https://host[:port], not {self.url!r}")
        return parts.hostname, parts.port or 8006


class HttpsApi:
    """The https backend: proxmoxer's real client with API-token auth."""

    def __init__(self, endpoint: HttpsEndpoint, name: str = "peer") -> None:
        self.endpoint = endpoint
        self.name = name
        self._client: Any = None

    def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        from proxmoxer import ProxmoxAPI  # Debian's python3-proxmoxer; import only when used

        host, port = self.endpoint.host_port()
        user, sep, token_name = self.endpoint.token_id.partition("!")
        if not sep or "@" not in user:
            raise ConfigError(
                f"API token id must look like user@realm!tokenid, not {self.endpoint.token_id!r}"
            )
        try:
            secret = self.endpoint.secret_file.read_text(encoding="utf-8").strip()
            # Accept the secret alone, or the whole "user@realm!tokenid=secret" line.
            if secret.startswith(f"{self.endpoint.token_id}="):
                secret = secret.partition("=")[2]
        except OSError as exc:
            raise ConfigError(
                f"cannot read the API token secret: {exc.strerror}", str(self.endpoint.secret_file)
            ) from exc
        verify: bool | str = self.endpoint.verify
        if self.endpoint.verify and self.endpoint.ca_file is not None:
            verify = str(self.endpoint.ca_file)
        self._client = ProxmoxAPI(
            host,
            port=port,
            backend="https",
            user=user,
            token_name=token_name,
            token_value=secret,
            verify_ssl=verify,
            timeout=self.endpoint.timeout,
        )
        session = getattr(self._client, "_store", {}).get("session")
        if session is not None:
            _bound_requests(session, self.endpoint.timeout)
        return self._client

    def _call(self, method: str, path: str, params: dict[str, Any]) -> Any:
        import requests
        from proxmoxer.core import ResourceException

        resource = self._connect()
        for part in path.strip("/").split("/"):
            resource = resource(part)
        try:
            return getattr(resource, method)(**params)
        except ResourceException as exc:
            what = f"{self.name} API: {method.upper()} {path}: {exc}"
            if getattr(exc, "status_code", None) == 401:
                raise PveAuthError(
                    f"{what} (API token {self.endpoint.token_id} refused: check its secret "
                    "and that it exists and is not expired)"
                ) from exc
            if getattr(exc, "status_code", None) == 403:
                raise PveAuthError(f"{what} (API token {self.endpoint.token_id})") from exc
            raise PveApiError(what) from exc
        except requests.exceptions.SSLError as exc:
            raise PveApiError(
                f"{self.name} API: TLS verification of {self.endpoint.url} failed "
                "(set the peer's CA file or api-verify 0)"
            ) from exc
        except requests.exceptions.RequestException as exc:
            # Same message either way; only the class says whether it never connected.
            kind = PveUnreachableError if connect_failed(exc) else PveApiError
            raise kind(
                f"{self.name} API: cannot reach {self.endpoint.url}: {type(exc).__name__}"
            ) from exc
        except ValueError as exc:  # the body is not PVE's JSON (a proxy's page, ...)
            raise PveApiError(
                f"{self.name} API: {method.upper()} {path}: the answer of "
                f"{self.endpoint.url} cannot be read ({exc})"
            ) from exc

    def get(self, path: str, /, **params: Any) -> Any:
        """GET ``path``; raises PveApiError on an HTTP error or when unreachable."""
        return self._call("get", path, params)

    def post(self, path: str, /, **params: Any) -> Any:
        """POST ``path``; raises PveApiError on an HTTP error or when unreachable."""
        return self._call("post", path, params)

    def put(self, path: str, /, **params: Any) -> Any:
        """PUT ``path``; raises PveApiError on an HTTP error or when unreachable."""
        return self._call("put", path, params)


class PveshApi:
    """The local backend: ``pvesh`` on this node, which needs no credentials as root."""

    name = "local"

    def __init__(self, timeout: float = 900.0) -> None:
        self.timeout = timeout

    def _call(self, verb: str, path: str, params: dict[str, Any]) -> Any:
        argv = ["pvesh", verb, path, "--output-format", "json"]
        for key, value in params.items():
            argv += [f"--{key}", str(value)]
        try:
            result = execute.run(argv, timeout=self.timeout)
        except CommandError as exc:
            why = exc.stderr.strip().splitlines()
            detail = why[0] if why else str(exc)
            if exc.returncode == 127:
                detail = "pvesh not found: this needs a Proxmox VE node"
            raise PveApiError(f"local API: pvesh {verb} {path}: {detail}") from exc
        # A worker task prints its output before the final line (the UPID or JSON).
        last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "null"
        try:
            return json.loads(last)
        except ValueError:
            return last

    def get(self, path: str, /, **params: Any) -> Any:
        """GET ``path`` through pvesh; raises PveApiError with pvesh's message."""
        return self._call("get", path, params)

    def post(self, path: str, /, **params: Any) -> Any:
        """POST ``path`` through pvesh (``pvesh create``); raises PveApiError."""
        return self._call("create", path, params)

    def put(self, path: str, /, **params: Any) -> Any:
        """PUT ``path`` through pvesh (``pvesh set``); raises PveApiError."""
        return self._call("set", path, params)


def open_api(backend: str, endpoint: HttpsEndpoint | None = None, name: str = "peer") -> PveApi:
    """Give the API backend named ``backend`` (``pvesh`` or ``https``).

    Raises ConfigError for an unknown backend or an https backend without an endpoint.
    """
    if backend == "pvesh":
        return PveshApi()
    if backend == "https":
        if endpoint is None:
            raise ConfigError("the https API backend needs a URL and an API token")
        return HttpsApi(endpoint, name)
    raise ConfigError(f"unknown PVE API backend {backend!r} (expected pvesh or https)")
