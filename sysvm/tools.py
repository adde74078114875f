"""Host tools each stage needs, checked before any work, with the Debian package that provides them."""

from __future__ import annotations

import shutil

from sysvm.errors import SysvmError

DEBIAN_PACKAGES = {
    "mmdebstrap": "mmdebstrap",
    "tar": "tar",
    "mkfs.ext4": "e2fsprogs",
    "sfdisk": "fdisk",
    "grub-mkimage": "grub-common",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "packer": "packer",
    "ssh-keygen": "openssh-client",
    "lbzip2": "lbzip2",
    "file": "file",
    "systemctl": "systemd",
    "debugfs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
}

STAGE_TOOLS = {
    "rootfs": ("mmdebstrap", "tar"),
    "disk": ("tar", "mkfs.ext4", "sfdisk", "grub-mkimage", "qemu-img", "systemctl"),
    "packer": ("packer", "qemu-system-x86_64", "qemu-img", "ssh-keygen"),
    "overlay": ("qemu-img", "debugfs", "e2fsck"),
    "export": ("qemu-img", "lbzip2"),
    "verify": ("qemu-system-x86_64", "qemu-img", "lbzip2", "ssh-keygen"),
}


def require(stages: tuple[str, ...] | list[str]) -> None:
    """Stop before any work when a tool is missing, naming the package that provides it."""
    missing = sorted({tool for stage in stages for tool in STAGE_TOOLS[stage] if shutil.which(tool) is None})
    if missing:
        packages = sorted({DEBIAN_PACKAGES[tool] for tool in missing})
        raise SysvmError(
            f"missing host tools: {', '.join(missing)} (install with: apt-get install {' '.join(packages)})"
        )
