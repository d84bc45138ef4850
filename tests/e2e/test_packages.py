"""Every package a host needs was installed by the run, from the lab mirror, on hosts with no way out.

The lab image is a fresh server (lab/README.md): whatever a role forgets to install is missing there, as on an
operator's new VM. These tests read what apt itself recorded: /var/log/apt/history.log has one entry per apt
run, and only runs through sudo (Ansible's become) carry `Requested-By`; the image build's runs do not.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest
import yaml

from .stack import REPO, Host, poolers, postgres_host

pytestmark = pytest.mark.e2e

try:
    POOLERS = poolers()
    HOSTS = [postgres_host(), *POOLERS]
except AssertionError:  # lab down: test_clients.test_the_lab_is_up fails loudly
    POOLERS, HOSTS = [], []

_INSTALLED = re.compile(r"([a-z0-9][a-z0-9+.-]*):[a-z0-9]+ \(")


def _defaults(role: str) -> dict[str, Any]:
    base = REPO / ("lab/roles" if role.startswith("lab_") else "roles") / role / "defaults/main.yml"
    data = yaml.safe_load(base.read_text())
    assert isinstance(data, dict)
    return data


def _history(host: Host) -> tuple[set[str], set[str]]:
    """Packages installed by the image build's apt runs, and by runs on the host (through sudo)."""
    image: set[str] = set()
    runs: set[str] = set()
    text = host.run("cat /var/log/apt/history.log")
    for entry in text.split("\n\n"):
        installed = {
            name
            for line in entry.splitlines()
            if line.startswith(("Install: ", "Upgrade: "))
            for name in _INSTALLED.findall(line)
        }
        (runs if "\nRequested-By: " in "\n" + entry else image).update(installed)
    return image, runs


def _suite(host: Host) -> str:
    return host.run(". /etc/os-release && echo $VERSION_CODENAME").strip()


def _assert_installed_by_run(host: Host, products: list[str], libraries: list[str]) -> None:
    _, runs = _history(host)
    missing = [p for p in products if p not in runs]
    assert not missing, f"{host.name}: not installed by the run (apt history): {missing}"
    # A run-time library may come with the base system (libssl3 with sshd, libsystemd0 with debootstrap's
    # systemd): then the role's apt task had nothing to do, but the library must be there.
    for lib in libraries:
        status = host.run(f"dpkg-query -W -f='${{Status}}' {lib}")
        assert status == "install ok installed", f"{host.name}: {lib}: {status}"


@pytest.mark.parametrize("host", POOLERS, ids=lambda h: h.name)
def test_pooler_packages_were_installed_by_the_run(host: Host) -> None:
    build = _defaults("pgbouncer_build")
    runtime = build["pgbouncer_build_runtime_packages"][_suite(host)]["base"]
    # keepalived: the lab's pooler group has a virtual IP (lab_pooler_vip), so roles/keepalived installs it.
    products = ["haproxy", "keepalived", *_defaults("pgbouncer_exporter")["pgbouncer_exporter_packages"]]
    _assert_installed_by_run(host, products, runtime)
    assert host.run("command -v socat || true").strip() == "", (
        "socat is on a pooler host; no role installs it"
    )


def test_lab_backend_and_builder_packages_were_installed_by_the_run() -> None:
    host = postgres_host()
    products = [*_defaults("lab_postgres")["lab_postgres_packages"]]
    products += _defaults("lab_prometheus")["lab_prometheus_packages"]
    build = _defaults("pgbouncer_build")
    # The builder (pg1 in the lab) compiles only when the controller has no artifact of this build yet; the
    # build user is created right after the build dependencies are installed.
    if host.run(f"id -u {build['pgbouncer_build_user']} >/dev/null 2>&1 && echo built || true").strip():
        products += build["pgbouncer_build_packages"]
    _assert_installed_by_run(host, products, [])


@pytest.mark.parametrize("host", HOSTS, ids=lambda h: h.name)
def test_hosts_have_no_route_out_and_only_the_lab_mirror(host: Host) -> None:
    assert host.run("ip -4 route show default; ip -6 route show default").strip() == ""
    unreachable = host.run("ip route get 1.1.1.1 2>&1 || true")
    assert "unreachable" in unreachable, f"{host.name}: {unreachable}"
    bridge = ipaddress.IPv4Interface(f"{host.address}/24").network.network_address + 1
    sources = host.run("cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null || true")
    lines = [line.split() for line in sources.splitlines() if line.strip() and not line.startswith("#")]
    suite = _suite(host)
    assert lines == [["deb", "[trusted=yes]", f"http://{bridge}:3142/debian", suite, "main"]], sources
