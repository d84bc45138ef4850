"""Lab constants and pure planning logic: which machines exist, their addresses, the image cache key."""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

# Bump whenever image-time setup changes in a way that must invalidate cached images.
IMAGE_SETUP_VERSION = 7

REPO_ROOT = Path(__file__).resolve().parents[2]
STATE_DIR = REPO_ROOT / ".lab"
# Images and package mirrors are shared by every checkout and slot; AUTOPGPOOL_LAB_CACHE moves them (a cold
# `make demo` measured beside a warm cache, a disk with more room).
CACHE_ROOT = Path(os.environ.get("AUTOPGPOOL_LAB_CACHE", "") or "/var/cache/autopgpool-lab").resolve()
IMAGE_CACHE_DIR = CACHE_ROOT / "images"
# A superseded image or mirror is removed once unused for this long (several checkouts share the caches).
PRUNE_UNUSED_AFTER = 2 * 24 * 3600

# Several labs can run side by side on one machine (two platforms, two checkouts), each in its own slot:
# AUTOPGPOOL_LAB_SLOT=N (0-9) gives it its own bridge, network 10.231.N.0/24, machine names, machine
# directory and lock. Slot 0 is the default and keeps the names and addresses the docs show.
SLOT = int(os.environ.get("AUTOPGPOOL_LAB_SLOT", "0") or 0)
if not 0 <= SLOT <= 9:
    raise SystemExit(f"AUTOPGPOOL_LAB_SLOT: expected 0 to 9, got {SLOT}")
_SUFFIX = "" if SLOT == 0 else str(SLOT)
LOCK_FILE = Path(f"/run/lock/autopgpool-lab{_SUFFIX}.lock")
MACHINES_DIR = Path(f"/var/lib/autopgpool-lab/machines{_SUFFIX}")

MIRROR = "http://deb.debian.org/debian"
# The lab's own package mirror (mirror.py): collected repositories and the .deb download cache, and the port
# its HTTP server listens on at the bridge address.
MIRROR_CACHE_DIR = CACHE_ROOT / "mirror"
MIRROR_PORT = 3142
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
SUPPORTED_SUITES = ("bookworm", "trixie")
# The Debian release of the lab machines when no --suite is given; make test runs a molecule scenario per
# release, one after the other, and each sets this for all it starts (labctl, the playbooks, the tests).
DEFAULT_SUITE = os.environ.get("AUTOPGPOOL_LAB_SUITE", "") or "bookworm"
if DEFAULT_SUITE not in SUPPORTED_SUITES:
    raise SystemExit(f"AUTOPGPOOL_LAB_SUITE: expected one of {', '.join(SUPPORTED_SUITES)}")

BRIDGE = f"apglab{SLOT}"
NETWORK = ipaddress.IPv4Network(f"10.231.{SLOT}.0/24")
HOST_ADDRESS = ipaddress.IPv4Address(f"10.231.{SLOT}.1")
FIRST_MACHINE_OCTET = 10
# The pooler hosts' shared client address (roles/keepalived): outside the machines' .10-.30 range.
POOLER_VIP = ipaddress.IPv4Address(f"10.231.{SLOT}.100")
MACHINE_PREFIX = "apg-" if SLOT == 0 else f"apg{SLOT}-"


def machine_tag(name: str) -> str:
    """What tells a machine's processes and cgroup apart from every other slot's (slot 0: the bare name)."""
    return name if SLOT == 0 else MACHINE_PREFIX + name


MAX_POOLERS = 20
LAB_USER = "ops"

# debootstrap installs only this small base; everything else comes through apt inside the
# chroot, where security and point-release updates are also visible.
BOOTSTRAP_PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "ca-certificates",
)

# What a freshly installed Debian server has, and nothing the roles install: every package a role or a lab
# playbook needs comes from the lab mirror (lab/autopgpool_lab/mirror.py), so a role that forgets to install
# one fails in the lab as it would on an operator's fresh VM.
IMAGE_PACKAGES: tuple[str, ...] = (
    # Init and the per-login session (PAM's systemd module, as on any Debian install with systemd).
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    # How Ansible reaches a host: sshd, sudo for become, python3 for its modules.
    "openssh-server",
    "sudo",
    "python3",
    # Ansible's apt module needs it; the module would install it itself, but not under --check.
    "python3-apt",
    # Priority "important" in Debian (every installer puts them on a server): ip/ss and ps/pgrep.
    "iproute2",
    "procps",
    # The trust store: every Debian server has it, and an operator's internal mirror may well be https.
    "ca-certificates",
)


@dataclass(frozen=True)
class Machine:
    """One lab machine: its short name, Ansible group and static address."""

    name: str
    group: str
    address: ipaddress.IPv4Address

    @property
    def unit_name(self) -> str:
        """The nspawn machine name (also used for the veth: vb-<name>, at most 15 chars)."""
        return MACHINE_PREFIX + self.name


def plan_machines(poolers: int = 2) -> list[Machine]:
    """pg1 then pool1..poolN, with consecutive addresses from .10."""
    if not 1 <= poolers <= MAX_POOLERS:
        raise ValueError(f"--machines: expected a number of poolers from 1 to {MAX_POOLERS}, got {poolers}")
    base = int(NETWORK.network_address) + FIRST_MACHINE_OCTET
    machines = [Machine("pg1", "postgres", ipaddress.IPv4Address(base))]
    for i in range(1, poolers + 1):
        machines.append(Machine(f"pool{i}", "pgbouncer", ipaddress.IPv4Address(base + i)))
    return machines


def image_cache_key(
    suite: str, packages: tuple[str, ...] = IMAGE_PACKAGES, setup_version: int = IMAGE_SETUP_VERSION
) -> str:
    """Directory name of the cached image: changes when the suite, packages or setup change."""
    material = "\n".join([suite, *sorted(set(packages)), f"setup={setup_version}"])
    return f"{suite}-{hashlib.sha256(material.encode()).hexdigest()[:12]}"


def image_path(suite: str) -> Path:
    """Where the finished image for a suite lives."""
    return IMAGE_CACHE_DIR / image_cache_key(suite)
