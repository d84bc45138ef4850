"""The pooler group's virtual IP on the lab (roles/keepalived), as the e2e tests and the drills see it."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import yaml

from .stack import LAB_INVENTORY, Host

SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


def pooler_vip() -> str:
    """The VIP `labctl up` wrote to the lab inventory (lab_pooler_vip, 10.231.<slot>.100)."""
    data = yaml.safe_load(LAB_INVENTORY.read_text())
    return str(data["all"]["vars"]["lab_pooler_vip"])


def vip_target() -> Host:
    """The VIP as a load target (tests/drills/load.py connects to ``address``; nobody ssh-es to it)."""
    return Host("vip", pooler_vip(), ())


def holders(hosts: list[Host], vip: str) -> list[str]:
    """The hosts that have the VIP on an interface right now."""
    return [h.name for h in hosts if f" {vip}/" in h.run("ip -4 -o addr show")]


def vrrp_state(host: Host) -> str:
    """The VRRP state in keepalived's latest 'Entering ... STATE' log line (MASTER, BACKUP, FAULT)."""
    out = host.run(
        "journalctl -u keepalived -o cat --no-pager -b | grep -o 'Entering [A-Z]* STATE' | tail -n1",
        check=False,
    )
    return out.split()[1] if out.strip() else ""


def answers(address: str, port: int, timeout: float = 0.3) -> bool:
    """Whether the front door at address:port answers an SSLRequest (what a client's first packet gets)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(SSL_REQUEST)
            return conn.recv(1) in (b"S", b"N")
    except OSError:
        return False


@dataclass
class Probe:
    """Samples the front door at address:port every `every` seconds, (time.time(), answered), from `start()`
    until `stop()` or at most `limit` seconds."""

    address: str
    port: int
    every: float = 0.05
    limit: float = 120

    def __post_init__(self) -> None:
        self.samples: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="vip-probe")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        end = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < end:
            self.samples.append((time.time(), answers(self.address, self.port)))
            time.sleep(self.every)

    def outage_after(self, event: float) -> tuple[float, float]:
        """(seconds from `event` until the front door answered again after its last failure, seconds it did
        not answer in all), (0, 0) when it never failed after `event`."""
        after = [(t, ok) for t, ok in self.samples if t >= event]
        failed = [t for t, ok in after if not ok]
        if not failed:
            return 0.0, 0.0
        back = next((t for t, ok in after if ok and t > failed[-1]), None)
        if back is None:
            return float("inf"), float("inf")
        return back - event, back - failed[0]
