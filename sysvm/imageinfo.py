"""Virtual sizes read from image headers, so that seeding needs no qemu-img on the storage host."""

from __future__ import annotations

import struct
from pathlib import Path

from sysvm.errors import SysvmError

SECTOR = 512


def _qcow2(path: Path) -> int:
    with path.open("rb") as handle:
        header = handle.read(32)
    if header[:4] != b"QFI\xfb":
        raise SysvmError(f"{path}: not a qcow2 image")
    return struct.unpack(">Q", header[24:32])[0]


def _vhd(path: Path) -> int:
    # The footer is the last 512 bytes ("conectix"); its current size is at offset 48, big-endian.
    with path.open("rb") as handle:
        handle.seek(-SECTOR, 2)
        footer = handle.read(SECTOR)
    if footer[:8] != b"conectix":
        raise SysvmError(f"{path}: not a VHD image (no conectix footer)")
    return struct.unpack(">Q", footer[48:56])[0]


def _vmdk(path: Path) -> int:
    with path.open("rb") as handle:
        header = handle.read(20)
    if header[:4] != b"KDMV":
        raise SysvmError(f"{path}: not a sparse VMDK image")
    return struct.unpack("<Q", header[12:20])[0] * SECTOR


def header_virtual_size(path: Path, extension: str) -> int:
    """The virtual size an image's own header states (a raw image's is its length), read without qemu-img."""
    readers = {"qcow2": _qcow2, "vhd": _vhd, "vmdk": _vmdk}
    reader = readers.get(extension)
    return reader(path) if reader is not None else path.stat().st_size
