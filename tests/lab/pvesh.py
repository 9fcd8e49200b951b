"""The lab's ``pvesh``: Proxmox's API shell on a node of a lab site, against its simulator.

Behaves as pve-manager's pvesh (PVE::CLI::pvesh) does where pve-mirror can tell:

- it is root@pam on the node: no login, every privilege (the simulator takes the
  secret in ``<scratch>/root-secret`` for that);
- ``get|ls|create|set|delete <path> [--key value]... [--output-format text|json|
  json-pretty]``; the answer's data is printed in that format (default text);
- a call that starts a worker task runs it in the foreground, as every API call of
  the CLI environment does (PVE::RESTEnvironment::fork_worker, ``$sync`` for type
  ``cli``): the task's output goes to stdout while it runs; at the end ``TASK ERROR:
  <msg>`` prints ``<msg>`` on stderr and ``TASK WARNINGS: N`` prints "Task finished
  with N warning(s)!" on stderr; then the UPID is printed as the answer and pvesh
  exits 0 - also when the task failed;
- an API error (the call itself refused) prints the message on stderr and exits 255.

Run as ``python3 -m tests.lab.pvesh --scratch <site scratch dir> <verb> <path> ...``;
PveSite writes a ``pvesh`` wrapper for its site into ``<scratch>/bin``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

VERBS = {"get": "GET", "ls": "GET", "create": "POST", "set": "PUT", "delete": "DELETE"}
FORMATS = ("text", "json", "json-pretty")
POLL = 0.1


class PveshError(Exception):
    """The API refused the call; the message is what pvesh prints."""


def parse(argv: list[str]) -> tuple[Path, str, str, str, dict[str, str]]:
    """Give (scratch, verb, path, output format, params) of a command line.

    Raises PveshError for a command line pvesh would refuse.
    """
    if len(argv) < 2 or argv[0] != "--scratch":
        raise PveshError("usage: pvesh --scratch DIR <verb> <path> [OPTIONS]")
    scratch, rest = Path(argv[1]), argv[2:]
    if len(rest) < 2 or rest[0] not in VERBS:
        raise PveshError(f"usage: pvesh <{'|'.join(VERBS)}> <api_path> [OPTIONS]")
    verb, path, options = rest[0], rest[1], rest[2:]
    params: dict[str, str] = {}
    fmt = "text"
    i = 0
    while i < len(options):
        opt = options[i]
        if not opt.startswith("--"):
            raise PveshError(f"unable to parse option '{opt}'")
        key, eq, value = opt[2:].partition("=")
        if not eq:
            if i + 1 >= len(options):
                raise PveshError(f"missing value for option '{key}'")
            value = options[i + 1]
            i += 1
        i += 1
        if key == "output-format":
            if value not in FORMATS:
                raise PveshError(f"output-format: value '{value}' is not allowed")
            fmt = value
        else:
            params[key] = value
    return scratch, verb, "/" + path.strip("/"), fmt, params


class Client:
    """HTTPS to the site's simulator as root@pam."""

    def __init__(self, scratch: Path) -> None:
        ready = json.loads((scratch / "pvesim.ready").read_text())
        self.base = f"https://127.0.0.1:{ready['port']}/api2/json"
        self.cert = str(ready["cert"])
        self.auth = {"Authorization": "PVESimRoot=" + (scratch / "root-secret").read_text().strip()}

    def call(self, method: str, path: str, params: dict[str, str] | None = None) -> Any:
        """Give the answer's data; raises PveshError with pvesh's message on an error."""
        import requests

        kwargs: dict[str, Any] = {"headers": self.auth, "verify": self.cert, "timeout": 120}
        if method in ("GET", "DELETE"):
            kwargs["params"] = params or {}
        else:
            kwargs["data"] = params or {}
        reply = requests.request(method, self.base + path, **kwargs)
        if reply.status_code != 200:
            body = reply.json() if reply.content else {}
            lines = [reply.reason]
            if reply.status_code == 400:
                lines = [f"400 {reply.reason}"]
                lines += [f"{k}: {v}" for k, v in (body.get("errors") or {}).items()]
            raise PveshError("\n".join(lines))
        return reply.json().get("data")


def is_upid(value: Any) -> bool:
    """Tell whether an answer is a worker's UPID."""
    return isinstance(value, str) and value.startswith("UPID:") and value.endswith(":")


def follow_task(client: Client, upid: str) -> None:
    """Print the task's output as it comes and its end as pvesh does (see the docstring)."""
    node = upid.split(":")[1]
    base = f"/nodes/{node}/tasks/{upid}"
    printed = 0
    while True:
        status = client.call("GET", f"{base}/status")
        lines = client.call("GET", f"{base}/log", {"start": str(printed), "limit": "1000"})
        for entry in lines:
            text = str(entry["t"])
            printed += 1
            if not text.startswith("TASK "):
                print(text, flush=True)
        if status.get("status") == "stopped":
            more = client.call("GET", f"{base}/log", {"start": str(printed), "limit": "1000"})
            for entry in more:
                if not str(entry["t"]).startswith("TASK "):
                    print(entry["t"], flush=True)
            exitstatus = str(status.get("exitstatus", ""))
            if exitstatus.startswith("WARNINGS: "):
                count = exitstatus.removeprefix("WARNINGS: ")
                print(f"Task finished with {count} warning(s)!", file=sys.stderr)
            elif exitstatus != "OK":
                print(exitstatus, file=sys.stderr)
            return
        time.sleep(POLL)


def render(data: Any, fmt: str) -> str:
    """Give the answer as pvesh prints it (PVE::CLIFormatter::print_api_result)."""
    if fmt == "json":
        return json.dumps(data, sort_keys=True)
    if fmt == "json-pretty":
        return json.dumps(data, sort_keys=True, indent=4)
    if data is None:
        return ""
    if isinstance(data, str | int | float):
        return str(data)
    return json.dumps(data, sort_keys=True, indent=4)


def main(argv: list[str] | None = None) -> int:
    """Run one pvesh command; give its exit status (0, also after a failed task; 255)."""
    try:
        scratch, verb, path, fmt, params = parse(sys.argv[1:] if argv is None else argv)
        client = Client(scratch)
        data = client.call(VERBS[verb], path, params)
        if is_upid(data):
            follow_task(client, str(data))
    except PveshError as exc:
        print(str(exc), file=sys.stderr)
        return 255
    except (OSError, ValueError) as exc:
        print(f"pvesh: {exc}", file=sys.stderr)
        return 255
    text = render(data, fmt)
    if text:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
