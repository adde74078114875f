"""Small real disk images for tests, made with qemu-img, and tmpfs mounts standing in for storage."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.tiers import host_tool

CONVERSIONS = {"vhd": ("vpc", "subformat=dynamic,force_size=on"), "vmdk": ("vmdk", "subformat=streamOptimized")}


def empty_qcow2(path: Path, size: str) -> Path:
    subprocess.run([host_tool("qemu-img", "qemu-utils"), "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


def convert(source: Path, target: Path) -> Path:
    fmt, options = CONVERSIONS[target.suffix.lstrip(".")]
    subprocess.run([host_tool("qemu-img", "qemu-utils"), "convert", "-O", fmt, "-o", options, str(source),
                    str(target)], check=True)
    return target


@contextmanager
def tmpfs(mount: Path, options: str) -> Iterator[Path]:
    mount.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)
