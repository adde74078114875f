"""disk stage: the root filesystem into a partitioned disk that boots under a BIOS, without loop devices.

mke2fs writes the filesystem straight into the partition's place in the disk file (-d from a folder,
-E offset), and GRUB's boot sector and core image, built with the image's own GRUB modules, go into
the MBR and the gap before the partition. Nothing is mounted, so nothing can be left mounted.
"""

from __future__ import annotations

import shutil
import typing
import uuid
from dataclasses import dataclass
from pathlib import Path

from sysvm import log
from sysvm.config import Config
from sysvm.errors import SysvmError
from sysvm.fsutil import remove_tree, scratch_dir
from sysvm.qemu import PROBE_KERNEL
from sysvm.rootfs import Rootfs
from sysvm.run import run
from sysvm.stage import Stage
from sysvm.workspace import Workspace

SECTOR = 512
PARTITION_START = 1 << 20  # 1 MiB: room for GRUB's core image before the partition
MBR_CODE_SIZE = 440  # boot code; the disk signature and partition table follow and are kept
GRUB_CORE_MODULES = ("biosdisk", "part_msdos", "ext2", "search", "search_fs_uuid")
# Serial console (the hypervisors' consoles and QEMU's log) and eth0, eth1, ... in CloudStack's NIC order.
KERNEL_CONSOLE_ARGS = "console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0"
KERNEL_ARGS = f"ro {KERNEL_CONSOLE_ARGS}"
# For update-grub inside the VM (a kernel upgrade): it must write the same console and NIC naming.
GRUB_DEFAULTS = f"""GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="{KERNEL_CONSOLE_ARGS}"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
"""
FW_CFG_KEY = "opt/sysvm/build_key"

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
UNIT_FOLDERS = ("lib/systemd/system", "usr/lib/systemd/system", "etc/systemd/system")
INIT_SCRIPTS_KEPT = ("keepalived",)


@dataclass(frozen=True)
class BaseDisk:
    key: str
    image: Path  # qcow2
    root_uuid: str


def units_disabled(config: Config) -> list[str]:
    """Units turned off offline, from sysvm.yaml's services: every role-dependent service (none may start
    before the boot-time setup has decided the role; it enables a role's own), then the units that stay off
    whatever the role. Offline, since under emulation `systemctl disable` in the guest spends seconds per
    unit synchronising SysV links."""
    return [*(f"{name}.service" for name in config.services.managed), *config.services.disabled_at_build]


def disk_inputs(config: Config, rootfs: Rootfs) -> dict[str, object]:
    # Only what this stage does with the services: which role enables what is decided at boot, so a change
    # there renders a new image without rebuilding the disk.
    return {"rootfs": rootfs.key, "disk.size_mib": config.disk.size_mib, "disk.py KERNEL_ARGS": KERNEL_ARGS,
            "disk.py GRUB_DEFAULTS": GRUB_DEFAULTS, "disk.py BUILD_KEY_UNIT": BUILD_KEY_UNIT,
            "units disabled": units_disabled(config), "disk.py ENABLED_AT_BUILD": ENABLED_AT_BUILD,
            "disk.py INIT_SCRIPTS_KEPT": INIT_SCRIPTS_KEPT}


def kernel_version(root: Path) -> str:
    kernels = sorted(path.name.removeprefix("vmlinuz-") for path in (root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise SysvmError(f"{root}/boot: no kernel in the root filesystem (is linux-image-* in packages.common?)")
    return kernels[-1]


def configure_boot(root: Path, root_uuid: str, disabled: typing.Sequence[str]) -> str:
    kernel = kernel_version(root)
    (root / "etc/fstab").write_text(f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n")
    grub_dir = root / "boot/grub"
    modules_dir = grub_dir / "i386-pc"
    modules_dir.mkdir(parents=True, exist_ok=True)
    for module in (root / "usr/lib/grub/i386-pc").iterdir():
        if module.suffix in (".mod", ".lst"):
            shutil.copy2(module, modules_dir / module.name)
    (grub_dir / "grub.cfg").write_text(
        "set default=0\nset timeout=1\n"
        "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\n"
        f"search --no-floppy --fs-uuid --set=root {root_uuid}\n"
        "menuentry 'CloudStack system VM' {\n"
        f"  linux /boot/vmlinuz-{kernel} root=UUID={root_uuid} {KERNEL_ARGS}\n"
        f"  initrd /boot/initrd.img-{kernel}\n}}\n"
    )
    (root / "etc/default/grub").write_text(GRUB_DEFAULTS)
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
    by CloudStack's post-init, also runs update-rc.d: about 15 s each under emulation. `service NAME
    restart` goes to systemctl either way. keepalived's stays: CloudStack's redundant router edits it."""
    dropped = []
    for script in sorted((root / "etc/init.d").iterdir()):
        if script.name in INIT_SCRIPTS_KEPT or not any(
                (root / folder / f"{script.name}.service").exists() for folder in UNIT_FOLDERS):
            continue
        for link in (root / "etc").glob(f"rc?.d/[SK][0-9][0-9]{script.name}"):
            link.unlink()
        script.unlink()
        dropped.append(script.name)
    log.say(f"    disk: {len(dropped)} SysV scripts with a native unit removed ({', '.join(dropped)})")


def _lock_root_password(root: Path) -> None:
    shadow = root / "etc/shadow"
    lines = shadow.read_text().splitlines()
    locked = [":".join([fields[0], "*", *fields[2:]]) if fields[0] == "root" else line
              for line in lines for fields in [line.split(":")]]
    shadow.write_text("\n".join(locked) + "\n")


def install_grub(root: Path, disk: Path, root_uuid: str, scratch: Path) -> None:
    grub_modules = root / "usr/lib/grub/i386-pc"
    early = scratch / "early.cfg"
    early.write_text(f"search --no-floppy --fs-uuid --set=root {root_uuid}\nset prefix=($root)/boot/grub\n")
    core = scratch / "core.img"
    run(["grub-mkimage", "-O", "i386-pc", "-d", grub_modules, "-o", core, "-c", early, "-p", "/boot/grub",
         *GRUB_CORE_MODULES])
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


def build_disk(config: Config, rootfs: Rootfs, workspace: Workspace, force: bool = False) -> BaseDisk:
    stage = Stage.of(workspace, "disk", disk_inputs(config, rootfs))
    # Derived from the key so that the same inputs give the same filesystem UUID.
    root_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"sysvm-disk:{stage.key}"))
    result = BaseDisk(stage.key, stage.folder / "base.qcow2", root_uuid)
    if stage.reuse(result.image, force=force):
        return result
    scratch = scratch_dir(workspace.build / "tmp", "disk-")
    try:
        root = scratch / "root"
        root.mkdir()
        run(["tar", "-xpf", rootfs.tarball, "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", root])
        kernel = configure_boot(root, root_uuid, units_disabled(config))
        raw = scratch / "disk.raw"
        size = config.disk.size_mib << 20
        with raw.open("wb") as handle:
            handle.truncate(size)
        run(["sfdisk", "--quiet", raw], input=f"label: dos\nstart={PARTITION_START // SECTOR}, type=83, bootable\n".encode())
        partition_kib = (size - PARTITION_START) // 1024
        run(["mkfs.ext4", "-q", "-F", "-L", "ROOT", "-U", root_uuid, "-d", root,
             "-E", f"offset={PARTITION_START}", raw, f"{partition_kib}k"])
        install_grub(root, raw, root_uuid, scratch)
        with stage.building() as temporary:
            run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, temporary / "base.qcow2"])
            (temporary / "kernel").write_text(kernel + "\n")
        workspace.cache.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / f"boot/vmlinuz-{kernel}", workspace.cache / PROBE_KERNEL)
    finally:
        remove_tree(scratch)
    log.say(f"    disk: kernel {kernel}, {config.disk.size_mib} MiB disk, root UUID {root_uuid}")
    return result
