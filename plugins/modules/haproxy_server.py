#!/usr/bin/python
"""Drive HAProxy servers through the admin socket: set drain/ready/maint, wait until idle or UP, report state.

Talks to the socket with Python's standard library, so hosts need no socat. Check-mode aware: it reads the
state and predicts the change without sending a command.
"""

from __future__ import annotations

import csv
import io
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: haproxy_server
short_description: Set and wait on the state of HAProxy servers through the admin socket
description:
  - Reads C(show stat) from HAProxy's admin socket and reports each server's status, admin state and
    current sessions.
  - Optionally sets the admin state of the named servers (C(set server B/S state ...)) and waits until they
    have no session left (I(wait=idle)) or pass their health check and are in rotation (I(wait=up)).
  - Needs no socat; the socket is a unix stream socket that answers one command per connection.
options:
  socket:
    description: Path of HAProxy's admin socket (C(stats socket ... level admin)).
    type: path
    required: true
  backend:
    description: Backend (proxy) name.
    type: str
    required: true
  servers:
    description: Server names; empty means every server of the backend.
    type: list
    elements: str
    default: []
  state:
    description: Admin state to set; omitted leaves it alone.
    type: str
    choices: [ready, drain, maint]
  health:
    description: >-
      C(disable) pauses the servers' health checks (they keep their current state), C(enable) resumes them;
      omitted leaves them alone. A reload starts new workers with every check enabled.
    type: str
    choices: [enable, disable]
  wait:
    description: >-
      C(idle) waits until the servers hold no session, C(up) until every one is UP and ready, C(none) returns
      at once.
    type: str
    choices: [none, idle, up]
    default: none
  timeout:
    description: Seconds to wait.
    type: float
    default: 30
  fail_on_timeout:
    description: Fail when the wait times out (false reports C(timed_out=true) instead).
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Drain instance 2 and wait for its sessions to end
  haproxy_server:
    socket: /run/haproxy/admin.sock
    backend: pgbouncer_instances
    servers: [pgbouncer2]
    state: drain
    wait: idle
    timeout: 30
    fail_on_timeout: false

- name: Check that every instance is UP and in rotation
  haproxy_server:
    socket: /run/haproxy/admin.sock
    backend: pgbouncer_instances
    wait: up
    timeout: 10
"""

RETURN = r"""
servers:
  description: Each server of the backend by name, after the change and the wait.
  returned: always
  type: dict
  sample: {"pgbouncer1": {"status": "UP", "admin_state": "ready", "sessions": 3}}
timed_out:
  description: Whether the wait ended without reaching its condition.
  returned: always
  type: bool
"""

# Fields of `show stat` (HAProxy's CSV): proxy, server, current sessions, status.
_PXNAME = 0
_SVNAME = 1
_SCUR = 4
_STATUS = 17
# srv_admin_state bits of `show servers state` (HAProxy's SRV_ADMF_*): forced, inherited, configured, resolver
# and health-check maintenance; forced and inherited drain. `show stat` cannot tell: a drained server that is
# DOWN shows as DOWN.
_MAINT_BITS = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
_DRAIN_BITS = 0x08 | 0x10


class HAProxyError(Exception):
    """The socket could not be used or HAProxy refused a command; the message says which."""


def send(path: str, command: str, *, timeout: float = 5.0) -> str:
    """Send one command to the admin socket and return HAProxy's whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError as err:
            raise HAProxyError(f"HAProxy admin socket {path}: {err.strerror or err}") from None
    return b"".join(chunks).decode(errors="replace")


def servers_of(stat_csv: str, backend: str) -> dict[str, dict[str, Any]]:
    """The servers of one backend from `show stat` output."""
    found: dict[str, dict[str, Any]] = {}
    for row in csv.reader(io.StringIO(stat_csv.lstrip("# "))):
        if len(row) <= _STATUS or row[_PXNAME] != backend or row[_SVNAME] in ("FRONTEND", "BACKEND"):
            continue
        found[row[_SVNAME]] = {
            "status": row[_STATUS].split(" ")[0],
            "admin_state": "ready",
            "sessions": int(row[_SCUR] or 0),
        }
    return found


def admin_states(servers_state: str) -> dict[str, str]:
    """Server name -> ready, drain or maint, from `show servers state <backend>`."""
    states = {}
    for line in servers_state.splitlines():
        fields = line.split()
        if len(fields) > 6 and not line.startswith("#") and fields[6].isdigit():
            bits = int(fields[6])
            states[fields[3]] = "maint" if bits & _MAINT_BITS else "drain" if bits & _DRAIN_BITS else "ready"
    return states


def read(path: str, backend: str) -> dict[str, dict[str, Any]]:
    """Status, admin state and sessions of every server of ``backend``."""
    servers = servers_of(send(path, "show stat"), backend)
    for name, state in admin_states(send(path, f"show servers state {backend}")).items():
        if name in servers:
            servers[name]["admin_state"] = state
    return servers


def _done(servers: dict[str, dict[str, Any]], names: Iterable[str], wait: str) -> bool:
    if wait == "idle":
        return all(servers[n]["sessions"] == 0 for n in names)
    if wait == "up":
        return all(servers[n]["status"] == "UP" for n in names)
    return True


def run(
    params: dict[str, Any],
    *,
    check_mode: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """The module's work, without Ansible: returns changed, servers, timed_out (raises HAProxyError)."""
    path, backend = params["socket"], params["backend"]
    servers = read(path, backend)
    if not servers:
        raise HAProxyError(f"HAProxy has no backend {backend!r} with servers (socket {path})")
    names = list(params.get("servers") or servers)
    unknown = [n for n in names if n not in servers]
    if unknown:
        raise HAProxyError(
            f"backend {backend!r} has no server {', '.join(unknown)}; it has {', '.join(servers)}"
        )
    state = params.get("state")
    to_change = [n for n in names if state and servers[n]["admin_state"] != state]
    health = params.get("health")
    commands = [f"set server {backend}/{n} state {state}" for n in to_change]
    commands += [f"{health} health {backend}/{n}" for n in names] if health else []
    if check_mode:
        return {"changed": bool(commands), "servers": servers, "timed_out": False}
    for command in commands:
        answer = send(path, command).strip()
        if answer:
            raise HAProxyError(f"HAProxy refused `{command}`: {answer}")
    wait = params.get("wait") or "none"
    deadline = clock() + float(params.get("timeout", 30))
    servers = read(path, backend)
    while not _done(servers, names, wait) and clock() < deadline:
        sleep(0.2)
        servers = read(path, backend)
    return {"changed": bool(commands), "servers": servers, "timed_out": not _done(servers, names, wait)}


def main() -> None:  # pragma: no cover - exercised through ansible-playbook in the tests
    module = AnsibleModule(
        argument_spec={
            "socket": {"type": "path", "required": True},
            "backend": {"type": "str", "required": True},
            "servers": {"type": "list", "elements": "str", "default": []},
            "state": {"type": "str", "choices": ["ready", "drain", "maint"]},
            "health": {"type": "str", "choices": ["enable", "disable"]},
            "wait": {"type": "str", "choices": ["none", "idle", "up"], "default": "none"},
            "timeout": {"type": "float", "default": 30},
            "fail_on_timeout": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    try:
        result = run(module.params, check_mode=module.check_mode)
    except HAProxyError as err:
        module.fail_json(msg=str(err))
    if result["timed_out"] and module.params["fail_on_timeout"]:
        module.fail_json(
            msg=f"servers still not {module.params['wait']} after {module.params['timeout']} s", **result
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
