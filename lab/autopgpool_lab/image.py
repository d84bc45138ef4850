"""Build the cached base rootfs with debootstrap, then apt inside it (with security updates)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from . import config
from .system import LabError, run, unmount_all_under

MARKER = ".autopgpool-lab-image.json"

# Runs inside the new rootfs (via systemd-nspawn, which provides /proc, /dev and the host's DNS).
# Services must not start during the build: policy-rc.d answers "no" until setup removes it.
_INSTALL_SCRIPT = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 LC_ALL=C.UTF-8
apt-get -q update
apt-get -q -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold dist-upgrade
apt-get -q -y --no-install-recommends -o Dpkg::Options::=--force-confold install {packages}
apt-get clean
"""

_SETUP_SCRIPT = r"""
set -eu
systemctl enable systemd-networkd.service ssh.service
# Reads the kernel command line for network config; useless in a container and seen failing at boot.
systemctl mask systemd-network-generator.service
if systemctl list-unit-files systemd-resolved.service >/dev/null 2>&1; then
    systemctl disable systemd-resolved.service || true
fi
id -u {user} >/dev/null 2>&1 || useradd --create-home --shell /bin/bash {user}
printf '%s ALL=(ALL) NOPASSWD:ALL\n' {user} > /etc/sudoers.d/{user}
chmod 0440 /etc/sudoers.d/{user}
visudo -c -f /etc/sudoers.d/{user}
install -d -m 0700 -o {user} -g {user} /home/{user}/.ssh
printf 'PermitRootLogin no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\n' \
    > /etc/ssh/sshd_config.d/10-autopgpool-lab.conf
rm -f /etc/ssh/ssh_host_*
rm -f /usr/sbin/policy-rc.d
# The machines' only apt source is the lab mirror (written by `up`); lists of the build's mirror would lie.
: > /etc/apt/sources.list
rm -rf /var/lib/apt/lists/*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
: > /etc/hostname
"""


def is_cached(path: Path) -> bool:
    """An image counts as cached only once its marker is in place (written last, before the rename)."""
    return (path / MARKER).is_file()


def _clean_stale_tmp(cache_dir: Path) -> None:
    for stale in cache_dir.glob(".tmp-*"):
        print(f"removing half-built image {stale}", file=sys.stderr)
        unmount_all_under(stale)
        shutil.rmtree(stale, ignore_errors=True)


def _nspawn_sh(root: Path, script: str, timeout: float) -> None:
    run(
        [
            "systemd-nspawn",
            "--quiet",
            "-D",
            root,
            "--register=no",
            "--keep-unit",
            "--console=pipe",
            "--resolv-conf=copy-host",
            "--timezone=off",
            "/bin/sh",
            "-c",
            script,
        ],
        timeout=timeout,
    )


def _sources(suite: str) -> str:
    return (
        f"deb {config.MIRROR} {suite} main\n"
        f"deb {config.MIRROR} {suite}-updates main\n"
        f"deb {config.SECURITY_MIRROR} {suite}-security main\n"
    )


def build_image(suite: str, *, force: bool = False) -> Path:
    """Build (or reuse) the image for suite; returns its path."""
    if suite not in config.SUPPORTED_SUITES:
        raise LabError(f"--suite: expected one of {', '.join(config.SUPPORTED_SUITES)}, got {suite!r}")
    final = config.image_path(suite)
    if is_cached(final) and not force:
        (final / MARKER).touch()  # last use: other checkouts' pruning keeps what was used recently
        print(f"image cached: {final}")
        _prune_old_images(suite, keep=final)
        return final
    if os.geteuid() != 0:
        raise LabError("building the image needs root (debootstrap, mounts)")
    config.IMAGE_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(config.IMAGE_CACHE_DIR)
    tmp = config.IMAGE_CACHE_DIR / f".tmp-{final.name}-{os.getpid()}"
    started = time.monotonic()
    try:
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--components=main",
                "--include=" + ",".join(config.BOOTSTRAP_PACKAGES),
                suite,
                tmp,
                config.MIRROR,
            ],
            timeout=900,
        )
        (tmp / "etc/apt/sources.list").write_text(_sources(suite))
        policy = tmp / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        _nspawn_sh(tmp, _INSTALL_SCRIPT.format(packages=" ".join(config.IMAGE_PACKAGES)), timeout=1200)
        _nspawn_sh(tmp, _SETUP_SCRIPT.format(user=config.LAB_USER), timeout=300)
        elapsed = round(time.monotonic() - started, 1)
        meta = {
            "suite": suite,
            "packages": list(config.IMAGE_PACKAGES),
            "setup_version": config.IMAGE_SETUP_VERSION,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": elapsed,
        }
        (tmp / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():
            unmount_all_under(final)
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        unmount_all_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"image built in {elapsed}s: {final}")
    _prune_old_images(suite, keep=final)
    return final


def _prune_old_images(suite: str, keep: Path) -> None:
    """Remove superseded images of the suite unless a machine uses one or it was used lately (another
    checkout or branch of the repository may want it: several share this cache)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        mountinfo = fh.read()
    for old in config.IMAGE_CACHE_DIR.glob(f"{suite}-*"):
        if (
            old != keep
            and is_cached(old)
            and f"lowerdir={old}," not in mountinfo
            and time.time() - (old / MARKER).stat().st_mtime > config.PRUNE_UNUSED_AFTER
        ):
            print(f"removing superseded image {old}")
            shutil.rmtree(old)
