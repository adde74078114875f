"""Virtual sizes read from image headers, so that seeding needs no qemu-img on the storage host."""

from __future__ import annotations

import re
import struct
import tarfile
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


def _ova(path: Path) -> int:
    with tarfile.open(path) as archive:
        descriptor = next((m for m in archive.getmembers() if m.name.endswith(".ovf")), None)
        if descriptor is None:
            raise SysvmError(f"{path}: no .ovf descriptor in the OVA")
        text = archive.extractfile(descriptor).read().decode(errors="replace")  # type: ignore[union-attr]
    match = re.search(r'ovf:capacity="(\d+)"(?:[^>]*ovf:capacityAllocationUnits="byte \* 2\^(\d+)")?', text)
    if match is None:
        raise SysvmError(f"{path}: the OVF descriptor gives no disk capacity")
    return int(match.group(1)) << int(match.group(2) or 0)


def virtual_size(path: Path, extension: str) -> int:
    readers = {"qcow2": _qcow2, "vhd": _vhd, "vmdk": _vmdk, "ova": _ova}
    reader = readers.get(extension)
    return reader(path) if reader is not None else path.stat().st_size
