#!/usr/bin/python3
"""keepalived's health check of a pooler host's front door (roles/keepalived): exit 0 when it serves clients.

Connects to HAProxy's client port on loopback, as a client would, and sends a PostgreSQL SSLRequest.
HAProxy only passes the connection on to a pgbouncer instance its own checks hold UP, and pgbouncer answers
``S`` (client TLS on) or ``N`` before any authentication: one byte back means HAProxy runs, accepts, and at
least one instance behind it accepts. No credential, no other host, standard library only.
Usage: frontdoor_check.py PORT.

One retry 0.1 s after a failure, inside keepalived's 1 s timeout, so that a single refused connect (a worker
handing over during a reload) does not give the address away; two failures in a row do.
"""

from __future__ import annotations

import socket
import sys
import time

HOST = "127.0.0.1"
# Length 8, then the SSLRequest code 1234.5679 (PostgreSQL protocol: 80877103).
SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")
ATTEMPT_TIMEOUT = 0.4
RETRY_PAUSE = 0.1


def answers(port: int, timeout: float = ATTEMPT_TIMEOUT) -> bool:
    """Whether a pgbouncer instance answered an SSLRequest through the front door on ``port``."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(SSL_REQUEST)
            return conn.recv(1) in (b"S", b"N")
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: frontdoor_check.py PORT", file=sys.stderr)
        return 2
    port = int(argv[1])
    if answers(port):
        return 0
    time.sleep(RETRY_PAUSE)
    return 0 if answers(port) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
