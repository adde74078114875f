"""disk stage: the root filesystem into a partitioned disk that boots, without loop devices.

mke2fs writes the filesystem straight into the partition's place in the disk file (-d from a folder,
-E offset). GRUB, built with the image's own modules, boots it: under a BIOS (amd64) its boot sector and
core image go into the MBR and the gap before the partition; under EFI (arm64) its EFI image goes, at
the removable-media path the firmware looks for, into an EFI system partition made as a FAT file
(mkfs.fat, mtools) and copied into place. Nothing is mounted, so nothing can be left mounted.
"""

from __future__ import annotations

import json
import os
import shutil
import typing
import uuid
from dataclasses import dataclass
from pathlib import Path

from sysvm import javastore, log, tools
from sysvm.config import Architecture, Config
from sysvm.errors import SysvmError
from sysvm.fsutil import remove_tree, scratch_dir
from sysvm.process import output, run
from sysvm.qemu import PROBE_KERNEL
from sysvm.rootfs import Rootfs
from sysvm.stage import Stage
from sysvm.workspace import Workspace

SECTOR = 512
MIB = 1 << 20
PARTITION_START = MIB  # the first partition: room for GRUB's core image (BIOS) or the GPT before it
MBR_CODE_SIZE = 440  # boot code; the disk signature and partition table follow and are kept
ESP_SIZE = 64 * MIB  # the EFI system partition: GRUB's EFI image only
# GRUB's modules built into the image it boots from; the rest it loads from /boot/grub/<platform>/.
GRUB_CORE_MODULES = {"bios": ("biosdisk", "part_msdos", "ext2", "search", "search_fs_uuid"),
                     "efi": ("part_gpt", "ext2", "search", "search_fs_uuid")}
# Where EFI firmware looks for a boot loader on a disk with no boot entries (the UEFI specification's
# removable-media path), per GRUB platform.
EFI_LOADERS = {"arm64-efi": "EFI/BOOT/BOOTAA64.EFI", "x86_64-efi": "EFI/BOOT/BOOTX64.EFI"}
FW_CFG_KEY = "opt/sysvm/build_key"
JAVA_TRUST_STORE = "etc/ssl/certs/java/cacerts"  # ca-certificates-java's, made alike in every build

BUILD_KEY_UNIT = f"""[Unit]
Description=Install the SSH key of the image build (present only while the image is built)
Before=ssh.service
ConditionVirtualization=vm

[Service]
Type=oneshot
ExecStartPre=-/sbin/modprobe qemu_fw_cfg
ExecStart=/bin/sh -c 'key=/sys/firmware/qemu_fw_cfg/by_name/{FW_CFG_KEY}/raw; [ -r "$key" ] || exit 0; \\
  install -d -m 0700 /root/.ssh && install -m 0600 "$key" /root/.ssh/authorized_keys'

[Install]
WantedBy=multi-user.target
"""
BUILD_KEY_UNIT_PATH = "etc/systemd/system/sysvm-build-key.service"
ENABLED_AT_BUILD = ("ssh.service", "netfilter-persistent.service", "sysvm-build-key.service")
# CloudStack's redundant router edits /etc/init.d/keepalived (cs/CsRedundant.py): it must be there.
KEPT_INIT_SCRIPTS = ("keepalived",)
UNIT_FOLDERS = ("lib/systemd/system", "usr/lib/systemd/system", "etc/systemd/system")


@dataclass(frozen=True)
class BaseDisk:
    key: str
    image: Path  # qcow2
    root_uuid: str
    root_offset: int = PARTITION_START  # where the root file system starts in the disk, in bytes


def root_offset(arch: Architecture) -> int:
    return PARTITION_START + (ESP_SIZE if arch.firmware == "efi" else 0)


def kernel_console_args(arch: Architecture) -> str:
    """Serial console (the hypervisors' consoles, QEMU's log) and eth0, eth1, ... in CloudStack's NIC order."""
    return f"console=tty0 console={arch.serial_console},115200n8 net.ifnames=0 biosdevname=0"


def grub_defaults(arch: Architecture) -> str:
    """/etc/default/grub, for update-grub inside the VM (a kernel upgrade): it must keep the same console and
    NIC naming. Under EFI the firmware's console already is the serial port."""
    terminal = ('GRUB_TERMINAL="console serial"\nGRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"\n'
                if arch.firmware == "bios" else 'GRUB_TERMINAL="console"\n')
    return ("GRUB_DEFAULT=0\nGRUB_TIMEOUT=1\nGRUB_DISTRIBUTOR=Debian\nGRUB_CMDLINE_LINUX_DEFAULT=\"\"\n"
            f'GRUB_CMDLINE_LINUX="{kernel_console_args(arch)}"\n{terminal}')


def units_disabled(config: Config) -> list[str]:
    """Units turned off offline, from sysvm.yaml's services: every role-dependent service (none may start
    before the boot-time setup has decided the role; it enables a role's own), then the units that stay off
    whatever the role. Offline, since under emulation `systemctl disable` in the guest spends seconds per
    unit synchronising SysV links."""
    return [*(f"{name}.service" for name in config.services.managed), *config.services.disabled_at_build]


def disk_inputs(config: Config, rootfs: Rootfs) -> dict[str, object]:
    # Only what this stage does with the services: which role enables what is decided at boot, so a change
    # there renders a new image without rebuilding the disk.
    arch = config.arch
    return {"rootfs": rootfs.key, "disk.size_mib": config.disk.size_mib,
            f"architectures.{config.debian.architecture}.firmware": arch.firmware,
            f"architectures.{config.debian.architecture}.grub_platform": arch.grub_platform,
            f"architectures.{config.debian.architecture}.serial_console": arch.serial_console,
            "disk.py ESP_SIZE": ESP_SIZE, "/etc/default/grub": grub_defaults(arch),
            "disk.py BUILD_KEY_UNIT": BUILD_KEY_UNIT, "units disabled": units_disabled(config),
            "disk.py ENABLED_AT_BUILD": ENABLED_AT_BUILD, "disk.py drops SysV scripts": "all with a native unit",
            "disk.py KEPT_INIT_SCRIPTS": KEPT_INIT_SCRIPTS,
            "disk.py make_root_filesystem": "hash seed from the UUID, times from the tree",
            "javastore.py settle_dates": JAVA_TRUST_STORE}


def kernel_version(root: Path) -> str:
    kernels = sorted(path.name.removeprefix("vmlinuz-") for path in (root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise SysvmError(f"{root}/boot: no kernel in the root filesystem (is linux-image-* in packages.common?)")
    return kernels[-1]


def efi_volume_id(root_uuid: str) -> str:
    """The EFI partition's FAT volume ID, derived like the root UUID: the same inputs give the same disk."""
    return root_uuid.replace("-", "")[:8].upper()


def configure_boot(root: Path, root_uuid: str, arch: Architecture, disabled: typing.Sequence[str]) -> str:
    kernel = kernel_version(root)
    fstab = f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n"
    if arch.firmware == "efi":
        volume = efi_volume_id(root_uuid)
        (root / "boot/efi").mkdir(parents=True, exist_ok=True)
        fstab += f"UUID={volume[:4]}-{volume[4:]} /boot/efi vfat umask=0077,nofail 0 1\n"
    (root / "etc/fstab").write_text(fstab)
    grub_dir = root / "boot/grub"
    modules_dir = grub_dir / arch.grub_platform
    modules_dir.mkdir(parents=True, exist_ok=True)
    for module in (root / "usr/lib/grub" / arch.grub_platform).iterdir():
        if module.suffix in (".mod", ".lst"):
            shutil.copy2(module, modules_dir / module.name)
    terminal = ("serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\n"
                if arch.firmware == "bios" else "")
    (grub_dir / "grub.cfg").write_text(
        f"set default=0\nset timeout=1\n{terminal}"
        f"search --no-floppy --fs-uuid --set=root {root_uuid}\n"
        "menuentry 'CloudStack system VM' {\n"
        f"  linux /boot/vmlinuz-{kernel} root=UUID={root_uuid} ro {kernel_console_args(arch)}\n"
        f"  initrd /boot/initrd.img-{kernel}\n}}\n"
    )
    (root / "etc/default/grub").write_text(grub_defaults(arch))
    (root / "etc/hostname").write_text("systemvm\n")
    (root / "etc/network/interfaces").write_text("auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n")
    (root / BUILD_KEY_UNIT_PATH).write_text(BUILD_KEY_UNIT)
    _drop_duplicate_init_scripts(root)
    systemctl = ["systemctl", f"--root={root}"]
    run([*systemctl, "disable", *disabled])
    run([*systemctl, "enable", *ENABLED_AT_BUILD])
    run([*systemctl, "set-default", "multi-user.target"])
    _lock_root_password(root)
    return kernel


def _drop_duplicate_init_scripts(root: Path) -> None:
    """Remove SysV scripts of services that have a systemd unit of their own (systemd never runs those
    scripts). With them, every `systemctl enable` or `disable` of such a service, by the role setup or
    by CloudStack's post-init, also runs update-rc.d: about 15 s each under emulation (post-init disables
    keepalived on every secondary storage VM and non-redundant router). `service NAME restart` goes to
    systemctl either way. The scripts CloudStack's own code edits stay (KEPT_INIT_SCRIPTS)."""
    dropped = []
    for script in sorted((root / "etc/init.d").iterdir()):
        if script.name in KEPT_INIT_SCRIPTS:
            continue
        if not any((root / folder / f"{script.name}.service").exists() for folder in UNIT_FOLDERS):
            continue
        for link in (root / "etc").glob(f"rc?.d/[SK][0-9][0-9]{script.name}"):
            link.unlink()
        script.unlink()
        dropped.append(script.name)
    log.say(f"disk: {len(dropped)} SysV scripts with a native unit removed ({', '.join(dropped)})")


def _lock_root_password(root: Path) -> None:
    shadow = root / "etc/shadow"
    lines = shadow.read_text().splitlines()
    locked = [":".join([fields[0], "*", *fields[2:]]) if fields[0] == "root" else line
              for line in lines for fields in [line.split(":")]]
    shadow.write_text("\n".join(locked) + "\n")


def grub_image(root: Path, root_uuid: str, arch: Architecture, scratch: Path) -> Path:
    """GRUB's first stage: finds the root file system by UUID and reads its modules and grub.cfg there."""
    early = scratch / "early.cfg"
    early.write_text(f"search --no-floppy --fs-uuid --set=root {root_uuid}\nset prefix=($root)/boot/grub\n")
    image = scratch / "grub.img"
    run(["grub-mkimage", "-O", arch.grub_platform, "-d", root / "usr/lib/grub" / arch.grub_platform, "-o", image,
         "-c", early, "-p", "/boot/grub", *GRUB_CORE_MODULES[arch.firmware]])
    return image


def install_bios_grub(root: Path, disk: Path, core: Path) -> None:
    grub_modules = root / "usr/lib/grub/i386-pc"
    core_bytes = core.read_bytes()
    if len(core_bytes) > PARTITION_START - SECTOR:
        raise SysvmError(f"{core}: GRUB core image of {len(core_bytes)} bytes does not fit before the partition")
    boot_sector = (grub_modules / "boot.img").read_bytes()
    # boot.img loads the sector after the MBR, where core.img's first sector lists the rest that follows.
    with disk.open("r+b") as handle:
        mbr = handle.read(SECTOR)
        handle.seek(0)
        handle.write(boot_sector[:MBR_CODE_SIZE] + mbr[MBR_CODE_SIZE:SECTOR - 2] + b"\x55\xaa")
        handle.seek(SECTOR)
        handle.write(core_bytes)


def install_efi_grub(disk: Path, loader: Path, arch: Architecture, root_uuid: str, scratch: Path) -> None:
    """An EFI system partition holding GRUB at the removable-media path, written into its place on the disk."""
    esp = scratch / "esp.img"
    run(["mkfs.fat", "-C", "-i", efi_volume_id(root_uuid), "-n", "EFI", esp, str(ESP_SIZE // 1024)])
    target = EFI_LOADERS[arch.grub_platform]
    folders = [folder.as_posix() for folder in reversed(Path(target).parents) if folder != Path(".")]
    run(["mmd", "-i", esp, *(f"::{folder}" for folder in folders)])
    run(["mcopy", "-i", esp, loader, f"::{target}"])
    with disk.open("r+b") as handle, esp.open("rb") as source:
        handle.seek(PARTITION_START)
        shutil.copyfileobj(source, handle)


def partition_table(arch: Architecture) -> str:
    """sfdisk's input: the root partition runs to the end of the disk, so that it can grow with the disk."""
    start = PARTITION_START // SECTOR
    if arch.firmware == "bios":
        return f"label: dos\nstart={start}, type=83, bootable\n"
    return (f"label: gpt\nstart={start}, size={ESP_SIZE // SECTOR}, type=U, name=EFI\n"
            f"start={root_offset(arch) // SECTOR}, type=L, name=ROOT\n")


def root_partition_bytes(raw: Path, offset: int) -> int:
    """The size sfdisk gave the partition that starts at `offset` (a GPT keeps a backup at the disk's end)."""
    table = json.loads(output(["sfdisk", "--json", raw]))["partitiontable"]
    sector = int(table.get("sectorsize", SECTOR))
    for partition in table["partitions"]:
        if int(partition["start"]) * sector == offset:
            return int(partition["size"]) * sector
    raise SysvmError(f"{raw}: sfdisk made no partition at byte {offset}")


def newest_time(tree: Path) -> int:
    """The newest modification time in a tree, links not followed."""
    newest = int(tree.lstat().st_mtime)
    for folder, folders, files in os.walk(tree):
        for name in (*folders, *files):
            newest = max(newest, int(os.lstat(os.path.join(folder, name)).st_mtime))
    return newest


def make_root_filesystem(raw: Path, root: Path, root_uuid: str, offset: int, size_kib: int) -> None:
    """The root file system, made from the tree at `offset` in the disk. Its superblock follows from the
    tree, not the clock: the directory hash seed is the UUID and its times are the tree's newest (with
    SOURCE_DATE_EPOCH, mmdebstrap clamped them to it). The inodes keep the tree's change times, which are
    tar's extraction (no program can set them); Packer's boot rewrites much of the file system anyway
    (docs/reproducibility.md)."""
    run(["mkfs.ext4", "-q", "-F", "-L", "ROOT", "-U", root_uuid, "-d", root,
         "-E", f"offset={offset},hash_seed={root_uuid}", raw, f"{size_kib}k"],
        env={"E2FSPROGS_FAKE_TIME": str(newest_time(root))})


def build_disk(config: Config, rootfs: Rootfs, workspace: Workspace, force: bool = False) -> BaseDisk:
    stage = Stage.of(workspace, "disk", disk_inputs(config, rootfs))
    # Derived from the key so that the same inputs give the same filesystem UUID.
    root_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"sysvm-disk:{stage.key}"))
    result = BaseDisk(stage.key, stage.folder / "base.qcow2", root_uuid, root_offset(config.arch))
    if stage.reuse(result.image, force=force):
        return result
    scratch = scratch_dir(workspace.build / "tmp", "disk-")
    try:
        root = scratch / "root"
        root.mkdir()
        run(["tar", "-xpf", rootfs.tarball, "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", root])
        if (root / JAVA_TRUST_STORE).is_file():  # each build's is dated by its writing
            javastore.settle_dates(root / JAVA_TRUST_STORE)
        kernel = configure_boot(root, root_uuid, config.arch, units_disabled(config))
        raw = scratch / "disk.raw"
        with raw.open("wb") as handle:
            handle.truncate(config.disk.size_mib * MIB)
        run(["sfdisk", "--quiet", raw], input=partition_table(config.arch).encode())
        partition_kib = root_partition_bytes(raw, result.root_offset) // 1024
        make_root_filesystem(raw, root, root_uuid, result.root_offset, partition_kib)
        loader = grub_image(root, root_uuid, config.arch, scratch)
        if config.arch.firmware == "efi":
            install_efi_grub(raw, loader, config.arch, root_uuid, scratch)
        else:
            install_bios_grub(root, raw, loader)
        with stage.building() as temporary:
            run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, temporary / "base.qcow2"])
            (temporary / "kernel").write_text(kernel + "\n")
        if config.debian.architecture == tools.host_architecture():  # the KVM probe boots the host's own kind
            workspace.cache.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / f"boot/vmlinuz-{kernel}", workspace.cache / PROBE_KERNEL)
    finally:
        remove_tree(scratch)
    log.say(f"disk: kernel {kernel}, {config.disk.size_mib} MiB disk, root UUID {root_uuid}")
    return result
