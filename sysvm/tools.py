"""Host tools each stage needs, checked before any work, with the Debian package that provides them."""

from __future__ import annotations

import functools
import platform
import shutil
from collections.abc import Sequence
from pathlib import Path

from sysvm.config import Architecture, Config
from sysvm.errors import SysvmError

DEBIAN_PACKAGES = {
    "mmdebstrap": "mmdebstrap",
    "tar": "tar",
    "mkfs.ext4": "e2fsprogs",
    "sfdisk": "fdisk",
    "grub-mkimage": "grub-common",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-system-aarch64": "qemu-system-arm",
    "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd": "qemu-efi-aarch64",
    "arch-test": "arch-test",
    "mkfs.fat": "dosfstools",
    "mmd": "mtools",
    "mcopy": "mtools",
    "packer": "packer",
    "ssh-keygen": "openssh-client",
    "lbzip2": "lbzip2",
    "file": "file",
    "systemctl": "systemd",
    "debugfs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "genisoimage": "genisoimage",
    "ip": "iproute2",
    "nfs-cp": "libnfs-utils",
    "nfs-cat": "libnfs-utils",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
    "gpg": "gpg",
    "gpgconf": "gpgconf",
    "dhclient": "isc-dhcp-client",
    "curl": "curl",
    "dig": "bind9-dnsutils",
}

STAGE_TOOLS = {
    "rootfs": ("mmdebstrap", "tar"),
    "disk": ("tar", "mkfs.ext4", "sfdisk", "grub-mkimage", "qemu-img", "systemctl"),
    "packer": ("packer", "qemu-img", "ssh-keygen"),
    "overlay": ("qemu-img", "debugfs", "e2fsck"),
    "export": ("qemu-img", "lbzip2"),
    "verify": ("qemu-img", "lbzip2", "ssh-keygen"),
    # the User VM roles: their ConfigDrive and test CKS ISO, and an NFS client in a network namespace
    "verify-user-vms": ("genisoimage", "ip", "nfs-cp", "nfs-cat", "/usr/lib/cni/bridge"),
    # a router's guest and public networks as namespaces: a guest's DHCP client, its HTTP and DNS queries
    "verify-routers": ("ip", "dhclient", "curl", "dig"),
}
BOOTING_STAGES = ("packer", "verify")
SIGNING_TOOLS = ("gpg", "gpgconf")  # export with export.signing_key
EFI_DISK_TOOLS = ("mkfs.fat", "mmd", "mcopy")


def architecture_tools(stages: Sequence[str], arch: Architecture, foreign: bool) -> set[str]:
    """What the stages need for this architecture: its QEMU and firmware, EFI partition tools, and
    mmdebstrap's check for running a foreign architecture's programs."""
    needed: set[str] = set()
    if any(stage in BOOTING_STAGES for stage in stages):
        needed |= {arch.qemu.binary, *([arch.qemu.firmware] if arch.qemu.firmware else [])}
    if "disk" in stages and arch.firmware == "efi":
        needed |= set(EFI_DISK_TOOLS)
    if "rootfs" in stages and foreign:
        needed.add("arch-test")
    return needed


def _present(tool: str) -> bool:
    return Path(tool).is_file() if tool.startswith("/") else shutil.which(tool) is not None


def require(stages: Sequence[str], config: Config) -> None:
    """Stop before any work when a tool is missing, naming the package that provides it."""
    wanted = {tool for stage in stages for tool in STAGE_TOOLS[stage]}
    wanted |= architecture_tools(stages, config.arch, config.debian.architecture != host_architecture())
    if "export" in stages and config.export.signing_key:
        wanted |= set(SIGNING_TOOLS)
    missing = sorted(tool for tool in wanted if not _present(tool))
    if missing:
        packages = sorted({DEBIAN_PACKAGES[tool] for tool in missing})
        raise SysvmError(
            f"missing host tools: {', '.join(missing)} (install with: apt-get install {' '.join(packages)})"
        )


# The kernel's machine name -> Debian's architecture name, for the hosts sysvm builds on.
DEBIAN_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}


@functools.cache
def host_architecture() -> str:
    """Debian's name for this host's architecture: an image of another one is built and booted under emulation."""
    machine = platform.machine()
    return DEBIAN_ARCHITECTURES.get(machine, machine)
