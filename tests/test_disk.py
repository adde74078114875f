"""disk stage: the partition layout and boot loader place of each architecture, on real disk files.

sfdisk, mkfs.fat and mtools run for real on sparse files; the boot itself is proven by the image tests
(amd64) and the arm64 verification (docs/arm64.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from sysvm import config, disk

MIB = 2**20
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"  # the EFI system partition's GPT type GUID


def _table(raw: Path) -> dict:
    return json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, check=True).stdout)[
        "partitiontable"]


def _blank(path: Path, size: int) -> Path:
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


@pytest.mark.host  # sfdisk (fdisk)
def test_amd64_keeps_one_mbr_partition_from_1_mib_to_the_end(tmp_path):
    arch = config.load().arch
    raw = _blank(tmp_path / "disk.raw", 256 * MIB)
    subprocess.run(["sfdisk", "--quiet", str(raw)], input=disk.partition_table(arch).encode(), check=True)
    table = _table(raw)
    assert table["label"] == "dos"
    [root] = table["partitions"]
    assert int(root["start"]) * 512 == disk.root_offset(arch) == disk.PARTITION_START
    assert disk.root_partition_bytes(raw, disk.root_offset(arch)) == 255 * MIB
    assert root.get("bootable") is True


@pytest.mark.host  # sfdisk (fdisk)
def test_arm64_gets_a_gpt_with_an_efi_partition_then_root_to_the_end(tmp_path):
    arch = config.load(None, ["debian.architecture=arm64"]).arch
    raw = _blank(tmp_path / "disk.raw", 256 * MIB)
    subprocess.run(["sfdisk", "--quiet", str(raw)], input=disk.partition_table(arch).encode(), check=True)
    table = _table(raw)
    assert table["label"] == "gpt"
    esp, root = table["partitions"]
    assert esp["type"] == ESP_TYPE
    assert (int(esp["start"]) * 512, int(esp["size"]) * 512) == (disk.PARTITION_START, disk.ESP_SIZE)
    assert int(root["start"]) * 512 == disk.root_offset(arch) == disk.PARTITION_START + disk.ESP_SIZE
    # The GPT's backup copy takes the last 33 sectors; sfdisk ends root on a MiB boundary before it.
    room = 256 * MIB - disk.root_offset(arch)
    assert room - MIB <= disk.root_partition_bytes(raw, disk.root_offset(arch)) <= room - 33 * 512


@pytest.mark.host  # sfdisk, mkfs.fat, mtools
def test_the_efi_partition_holds_grub_at_the_removable_media_path(tmp_path):
    arch = config.load(None, ["debian.architecture=arm64"]).arch
    raw = _blank(tmp_path / "disk.raw", 128 * MIB)
    subprocess.run(["sfdisk", "--quiet", str(raw)], input=disk.partition_table(arch).encode(), check=True)
    loader = tmp_path / "grub.img"
    loader.write_bytes(b"MZ not really GRUB" * 1000)
    root_uuid = "0d6f3b1c-5a2e-4c1f-9a7b-2f0e1d3c4b5a"
    disk.install_efi_grub(raw, loader, arch, root_uuid, tmp_path)
    image = f"{raw}@@{disk.PARTITION_START}"
    copied = subprocess.run(["mtype", "-i", image, "::EFI/BOOT/BOOTAA64.EFI"], capture_output=True, check=True).stdout
    assert copied == loader.read_bytes()
    info = subprocess.run(["minfo", "-i", image], capture_output=True, text=True, check=True).stdout
    assert "serial number: 0D6F3B1C" in info  # the fstab entry names this volume ID
    assert _table(raw)["label"] == "gpt"  # the FAT went into the partition, not over the table


@pytest.mark.parametrize(("architecture", "console", "serial_terminal"),
                         [("amd64", "ttyS0", True), ("arm64", "ttyAMA0", False)])
def test_update_grub_settings_keep_each_architectures_serial_console(architecture, console, serial_terminal):
    arch = config.load(None, [f"debian.architecture={architecture}"]).arch
    defaults = disk.grub_defaults(arch)
    assert f'GRUB_CMDLINE_LINUX="console=tty0 console={console},115200n8 net.ifnames=0 biosdevname=0"' in defaults
    assert ("GRUB_SERIAL_COMMAND" in defaults) is serial_terminal


@pytest.mark.host  # mkfs.ext4, debugfs (e2fsprogs)
def test_the_root_file_system_s_superblock_follows_from_the_tree_not_the_clock(tmp_path):
    """Two file systems made from one tree a second apart have the same superblock: the UUID as the
    directory hash seed, the tree's newest time as their creation and write time."""
    tree = tmp_path / "root"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("systemvm\n")
    os.utime(tree / "etc/hostname", (1_700_000_000, 1_700_000_000))
    for path in (tree / "etc", tree):
        os.utime(path, (1_600_000_000, 1_600_000_000))
    root_uuid = "6f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    superblocks = []
    for name in ("first.raw", "second.raw"):
        raw = _blank(tmp_path / name, 16 * MIB)
        disk.make_root_filesystem(raw, tree, root_uuid, MIB, 15 * 1024)
        with raw.open("rb") as image:
            image.seek(MIB + 1024)
            superblocks.append(image.read(1024))
        time.sleep(1.1)
    assert superblocks[0] == superblocks[1]
    stats = subprocess.run(["debugfs", "-R", "stats", f"{tmp_path / 'first.raw'}?offset={MIB}"],
                           capture_output=True, text=True, check=True, env={**os.environ, "TZ": "UTC"}).stdout
    assert re.search(rf"Directory Hash Seed:\s+{root_uuid}", stats), stats
    assert re.search(r"Filesystem created:\s+Tue Nov 14 22:13:20 2023", stats), stats
