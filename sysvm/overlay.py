"""overlay stage: write the rendered overlay into the provisioned disk, offline.

Packer provisions a disk without the overlay; this stage copies that disk to a raw image and writes
the overlay's files, folders and links into its ext4 filesystem with debugfs (no mount, no loop
device), enables the overlay's boot units, and checks the filesystem with e2fsck. A change to the
overlay alone therefore costs this stage and the export, not a new Packer boot.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sysvm import log
from sysvm.cache import stage_key
from sysvm.disk import PARTITION_START
from sysvm.errors import SysvmError
from sysvm.fsutil import atomic_path
from sysvm.packer import ProvisionedDisk
from sysvm.render import Overlay
from sysvm.run import output, run
from sysvm.workspace import Workspace

IMAGE_NAME = "systemvm.raw"
# Units of the overlay that start at every boot. cloud.service is left to the role setup.
ENABLED_UNITS = ("sysvm-growroot.service", "sysvm-setup.service", "sysvm-handover.service",
                 "sysvm-ssh-host-keys.service")
WANTS = "/etc/systemd/system/multi-user.target.wants"


@dataclass(frozen=True)
class FinalImage:
    key: str
    image: Path  # raw disk: what every artifact is exported from


def overlay_key(provisioned: ProvisionedDisk, overlay: Overlay) -> str:
    return stage_key("overlay", provisioned.key, overlay.key, ENABLED_UNITS)


def _filesystem(image: Path) -> str:
    return f"{image}?offset={PARTITION_START}"


def _existing(image: Path, paths: list[str], scratch: Path) -> set[str]:
    """Which of the paths exist in the image's filesystem (one read-only debugfs run)."""
    script = scratch / "lookup.debugfs"
    script.write_text("".join(f"stat {path}\n" for path in paths))
    text = output(["debugfs", "-f", script, _filesystem(image)])
    found, current = set(), None
    for line in text.splitlines():
        match = re.match(r"debugfs: stat (.+)$", line)
        if match:
            current = match.group(1)
        elif current is not None and line.startswith("Inode:"):
            found.add(current)
    return found


def write_script(tree: Path, existing: set[str]) -> list[str]:
    """debugfs commands that make the image hold every folder, file and link of the tree."""
    commands = []
    for source in sorted(tree.rglob("*")):
        target = "/" + source.relative_to(tree).as_posix()
        if source.is_dir() and not source.is_symlink():
            if target not in existing:
                commands.append(f"mkdir {target}")
            continue
        if target in existing:
            commands.append(f"rm {target}")
        if source.is_symlink():
            commands.append(f"symlink {target} {os.readlink(source)}")
        else:
            commands += [f"write {source} {target}", f"sif {target} uid 0", f"sif {target} gid 0"]
    return commands


def apply_overlay(provisioned: ProvisionedDisk, overlay: Overlay, workspace: Workspace,
                  force: bool = False) -> FinalImage:
    key = overlay_key(provisioned, overlay)
    folder = workspace.stage_dir("overlay", key)
    result = FinalImage(key, folder / IMAGE_NAME)
    if workspace.reusable("overlay", result.image, force=force):
        return result
    for entry in sorted(overlay.tree.rglob("*")):
        if any(c.isspace() for c in entry.name):
            raise SysvmError(f"{entry}: overlay paths must not contain white space (debugfs cannot write them)")
    # debugfs and e2fsck stamp what they write with the current time. The provisioned disk's time instead
    # makes the stage's output a function of its inputs, as its key says; export takes its stamps from the
    # resulting image's time in turn.
    when = int(provisioned.image.stat().st_mtime)
    fixed_time = {"E2FSPROGS_FAKE_TIME": str(when), "E2FSCK_TIME": str(when)}
    with atomic_path(folder) as temporary:
        temporary.mkdir(parents=True)
        image = temporary / IMAGE_NAME
        run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", provisioned.image, image])
        links = [f"{WANTS}/{unit}" for unit in ENABLED_UNITS]
        paths = ["/" + p.relative_to(overlay.tree).as_posix() for p in sorted(overlay.tree.rglob("*"))]
        existing = _existing(image, [*paths, WANTS, *links], temporary)
        commands = write_script(overlay.tree, existing)
        for unit, link in zip(ENABLED_UNITS, links, strict=True):
            commands += ([f"rm {link}"] if link in existing else []) + [f"symlink {link} /etc/systemd/system/{unit}"]
        script = temporary / "overlay.debugfs"
        script.write_text("\n".join(commands) + "\n")
        errors = run(["debugfs", "-w", "-f", script, _filesystem(image)], capture=True,
                     env=fixed_time).stderr.decode()
        problems = [line for line in errors.splitlines() if line.strip() and not line.startswith("debugfs ")]
        if problems:
            raise SysvmError(f"debugfs could not write the overlay: {problems[0]}")
        # e2fsck exits 1 when it only brought the free counts up to date, 0 when there was nothing to do.
        check = run(["e2fsck", "-f", "-y", _filesystem(image)], check=False, env=fixed_time)
        if check.returncode not in (0, 1):
            raise SysvmError(f"e2fsck found errors after writing the overlay (exit {check.returncode}; "
                             f"log: {log.current_log_path()})")
        script.unlink()
        (temporary / "lookup.debugfs").unlink()
        os.utime(image, (when, when))
    log.say(f"    overlay: {len(commands)} changes written into {result.image}")
    return result
