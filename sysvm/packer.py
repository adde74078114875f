"""packer stage: Packer's QEMU builder boots the base disk, provisions it over SSH, shuts it down.

The base disk does not hold the rendered overlay yet (the overlay stage writes it afterwards), so an
overlay-only change never boots Packer again; sshd still has Debian's configuration here (port 22).

The SSH key is made for this build only. QEMU hands it to the guest through fw_cfg, a unit of the
base disk installs it, and the last provisioning script removes both key and unit before shutdown.
The template is JSON, which Debian's Packer 1.6.6 reads, and current Packer reads too once its QEMU
plugin is installed (`packer plugins install github.com/hashicorp/qemu`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sysvm import log
from sysvm.cache import hash_tree
from sysvm.config import Config
from sysvm.disk import FW_CFG_KEY, BaseDisk
from sysvm.fsutil import remove_tree, scratch_dir, sha256_file
from sysvm.process import run
from sysvm.qemu import accelerator
from sysvm.resources import resource
from sysvm.stage import Stage
from sysvm.workspace import Workspace

SCRIPTS = resource("packer_scripts")
IMAGE_NAME = "systemvm.qcow2"
PACKER_QEMU = "qemu-system-x86_64"  # what Packer's QEMU builder runs unless told otherwise


@dataclass(frozen=True)
class ProvisionedDisk:
    key: str
    image: Path
    root_offset: int  # where the root file system starts, as in the base disk


def packer_inputs(config: Config, disk: BaseDisk) -> dict[str, object]:
    return {"disk": disk.key, f"releases.{config.debian.release}.iptables_backend": config.release.iptables_backend,
            "disk.size_mib": config.disk.size_mib, "packer.memory_mib": config.packer.memory_mib,
            "packer/scripts/": hash_tree(SCRIPTS)}


def template(config: Config, disk: BaseDisk, key_file: Path, output_dir: Path, serial_log: Path,
             accel: str) -> dict[str, object]:
    # MANAGED_SERVICES: what 20-configure.sh checks provisioning left disabled (sysvm.yaml's services);
    # the disk key covers it, since the disk stage disables the same list.
    environment = [f"IPTABLES_BACKEND={config.release.iptables_backend}",
                   f"MANAGED_SERVICES={' '.join(config.services.managed)}",
                   f"SERIAL_CONSOLE={config.arch.serial_console}"]
    machine = config.arch.qemu
    # Packer's defaults are x86's; another architecture names its QEMU, machine, CPU and firmware.
    emulated = {"qemu_binary": machine.binary, "machine_type": machine.machine} if machine.binary != PACKER_QEMU else {}
    machine_args = [*([["-cpu", machine.cpu]] if machine.cpu and accel == "tcg" else []),
                    *([["-bios", machine.firmware]] if machine.firmware else [])]
    return {
        "builders": [{
            "type": "qemu",
            "iso_url": str(disk.image),
            "iso_checksum": f"sha256:{sha256_file(disk.image)}",
            "disk_image": True,
            # Packer 1.6.6 creates a backing-file overlay without naming the backing format, which
            # current qemu-img refuses; a copy of the base disk works with every version.
            "use_backing_file": False,
            "skip_compaction": True,
            "format": "qcow2",
            # Packer grows a disk image to disk_size (40 GiB unless told): keep the configured size.
            "disk_size": f"{config.disk.size_mib}M",
            **emulated,
            "accelerator": accel,
            "headless": True,
            "output_directory": str(output_dir),
            "vm_name": IMAGE_NAME,
            "disk_interface": "virtio",
            "disk_discard": "unmap",
            "net_device": "virtio-net",
            "memory": config.packer.memory_mib,
            # One vCPU, as every verify boot: under TCG a guest of two, its vCPU threads starved on a busy
            # 2-core host, hit soft lockups and never answered SSH (seen once in a CI rehearsal).
            "cpus": 1,
            "communicator": "ssh",
            "ssh_username": "root",
            "ssh_private_key_file": str(key_file),
            "ssh_port": 22,
            "ssh_timeout": f"{config.packer.ssh_timeout_s}s",
            "boot_wait": "1s",
            "shutdown_command": "systemctl poweroff",
            "shutdown_timeout": "5m",
            "qemuargs": [
                ["-fw_cfg", f"name={FW_CFG_KEY},file={key_file}.pub"],
                ["-serial", f"file:{serial_log}"],
                *machine_args,
            ],
        }],
        "provisioners": [{
            "type": "shell",
            "scripts": [str(path) for path in sorted(SCRIPTS.glob("*.sh"))],
            "environment_vars": environment,
            "execute_command": "chmod +x {{ .Path }}; {{ .Vars }} {{ .Path }}",
        }],
    }


def provision(config: Config, disk: BaseDisk, workspace: Workspace, force: bool = False) -> ProvisionedDisk:
    stage = Stage.of(workspace, "packer", packer_inputs(config, disk))
    result = ProvisionedDisk(stage.key, stage.folder / IMAGE_NAME, disk.root_offset)
    if stage.reuse(result.image, force=force):
        return result
    accel = accelerator("auto", workspace.cache, config.debian.architecture)
    scratch = scratch_dir(workspace.build / "tmp", "packer-")
    try:
        key_file = scratch / "build_key"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sysvm-build", "-f", key_file])
        output_dir = scratch / "out"
        serial_log = workspace.logs / "packer-serial.log"
        document = template(config, disk, key_file, output_dir, serial_log, accel)
        template_file = scratch / "template.json"
        template_file.write_text(json.dumps(document, indent=2))
        # TMPDIR: Packer's own temporaries (its log among them) go where the next run clears them should this
        # one be killed outright.
        environment = {"PACKER_LOG": "1", "PACKER_LOG_PATH": str(workspace.logs / "packer-debug.log"),
                       "CHECKPOINT_DISABLE": "1", "PACKER_CACHE_DIR": str(workspace.cache / "packer"),
                       "TMPDIR": str(scratch)}
        with log.waiting(f"Packer to boot and provision the image ({accel}; serial console: {serial_log})"):
            run(["packer", "build", "-color=false", template_file], env=environment, cwd=scratch)
        with stage.building() as temporary:
            (output_dir / IMAGE_NAME).rename(temporary / IMAGE_NAME)
            (temporary / "template.json").write_text(template_file.read_text())
    finally:
        remove_tree(scratch)
    return result
