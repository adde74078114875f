"""overlay stage: write the rendered tree into the provisioned disk, offline.

Packer provisions a disk without the rendered tree; this stage copies that disk to a raw image and writes
the tree's files, folders and links into its ext4 filesystem with debugfs (no mount, no loop
device), enables the tree's boot units, and checks the filesystem with e2fsck. A change to the
rendered tree alone therefore costs this stage and the export, not a new Packer boot.

Each file and each folder the tree adds gets the tree's mode and owner byte for byte, each link its owner
(render set them: a user's layer keeps its own, sysvm's are root's); a folder the image has keeps its own.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from sysvm import extfs, log
from sysvm.errors import SysvmError
from sysvm.fsutil import walk
from sysvm.packer import ProvisionedDisk
from sysvm.process import output, run
from sysvm.render import RenderedTree, path_problem
from sysvm.stage import Stage
from sysvm.workspace import Workspace

IMAGE_NAME = "systemvm.raw"
# Units of the rendered tree that start at every boot. cloud.service is left to the role setup.
ENABLED_UNITS = ("sysvm-growroot.service", "sysvm-setup.service", "sysvm-handover.service",
                 "sysvm-ssh-host-keys.service", "sysvm-snakeoil.service")
WANTS = "/etc/systemd/system/multi-user.target.wants"
# What Packer's boot leaves after the cleanup script, up to its poweroff: removed offline, so that the
# template's VMs share no random seed, no DHCP lease and no journal of the build (whose folder is named by
# the build boot's machine id), and so that two builds differ in none of them. Logs are emptied in place
# (their modes and owners stay); a journal's files and folders go.
CLEARED_FILES = ("/var/lib/systemd/random-seed", "/var/cache/ldconfig/aux-cache")
LEASES = "/var/lib/dhcp"
LOGS = "/var/log"
JOURNAL = "/var/log/journal"


@dataclass(frozen=True)
class FinalImage:
    key: str
    image: Path  # raw disk: what every artifact is exported from


def overlay_inputs(provisioned: ProvisionedDisk, rendered: RenderedTree) -> dict[str, object]:
    return {"packer": provisioned.key, "render": rendered.key, "overlay.py ENABLED_UNITS": ENABLED_UNITS,
            "overlay.py build boot leftovers": [*CLEARED_FILES, LEASES, LOGS, JOURNAL]}


def leftover_commands(filesystem: str, scratch: Path) -> list[str]:
    """debugfs commands that clear what the build's boot left (CLEARED_FILES, LEASES, LOGS, JOURNAL)."""
    logs = extfs.tree(filesystem, LOGS, scratch)
    leases = extfs.listing(filesystem, [LEASES], scratch)
    cleared = extfs.listing(filesystem, sorted({str(Path(path).parent) for path in CLEARED_FILES}), scratch)
    commands = [_command("rm", path) for path in CLEARED_FILES if path in cleared]
    commands += [_command("rm", path) for path, entry in leases.items()
                 if entry.kind == "file" and path.endswith(".leases")]
    journal = [path for path in logs if path.startswith(f"{JOURNAL}/")]
    commands += [_command("rm", path) for path in journal if logs[path].kind != "folder"]
    commands += [_command("rmdir", path) for path in sorted(journal, key=len, reverse=True)
                 if logs[path].kind == "folder"]
    commands += [command for path, entry in sorted(logs.items()) if entry.kind == "file" and entry.size
                 and path not in journal for command in (_command("punch", path, "0"),
                                                         _command("sif", path, "size", "0"))]
    return commands


def _filesystem(image: Path, offset: int) -> str:
    return f"{image}?offset={offset}"


def _command(*words: str) -> str:
    """One line of a debugfs script. Render refuses what could split a word or a line (naming its layer);
    this is the last check, for a tree changed after render."""
    for word in words:
        if (problem := path_problem(word)) is not None:
            raise SysvmError(f"rendered tree: {word!r}: {problem}")
    return " ".join(words)


def _existing(filesystem: str, paths: list[str], scratch: Path) -> set[str]:
    """Which of the paths exist in the image's filesystem (one read-only debugfs run)."""
    script = scratch / "lookup.debugfs"
    script.write_text("".join(_command("stat", path) + "\n" for path in paths))
    text = output(["debugfs", "-f", script, filesystem])
    found, current = set(), None
    for line in text.splitlines():
        match = re.match(r"debugfs: stat (.+)$", line)
        if match:
            current = match.group(1)
        elif current is not None and line.startswith("Inode:"):
            found.add(current)
    return found


def write_script(tree: Path, existing: set[str]) -> list[str]:
    """debugfs commands that make the image hold every folder, file and link of the tree with its mode and
    owner; a folder in `existing` (the image has it) keeps its own. debugfs runs in the tree: files are
    named relative to it."""
    commands = []
    for relative, info in walk(tree):
        target = "/" + relative
        owner = [_command("sif", target, "uid", str(info.st_uid)),
                 _command("sif", target, "gid", str(info.st_gid))]
        mode = _command("sif", target, "mode", f"0{info.st_mode:o}")  # type bits too, as debugfs sets them
        if stat.S_ISDIR(info.st_mode):
            if target not in existing:
                commands += [_command("mkdir", target), mode, *owner]
            continue
        if target in existing:
            commands.append(_command("rm", target))
        if stat.S_ISLNK(info.st_mode):
            commands += [_command("symlink", target, os.readlink(tree / relative)), *owner]
        elif stat.S_ISREG(info.st_mode):
            commands += [_command("write", relative, target), mode, *owner]
        else:
            raise SysvmError(f"{tree / relative}: not a file, folder or link: debugfs cannot write it")
    return commands


def apply_overlay(provisioned: ProvisionedDisk, rendered: RenderedTree, workspace: Workspace,
                  force: bool = False) -> FinalImage:
    stage = Stage.of(workspace, "overlay", overlay_inputs(provisioned, rendered))
    result = FinalImage(stage.key, stage.folder / IMAGE_NAME)
    if stage.reuse(result.image, force=force):
        return result
    # debugfs and e2fsck stamp what they write with the current time. The provisioned disk's time instead
    # makes the stage's output a function of its inputs, as its key says; export takes its stamps from the
    # resulting image's time in turn.
    when = int(provisioned.image.stat().st_mtime)
    fixed_time = {"E2FSPROGS_FAKE_TIME": str(when), "E2FSCK_TIME": str(when)}
    with stage.building() as temporary:
        image = temporary / IMAGE_NAME
        run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", provisioned.image, image])
        links = [f"{WANTS}/{unit}" for unit in ENABLED_UNITS]
        paths = ["/" + relative for relative, _ in walk(rendered.tree)]
        filesystem = _filesystem(image, provisioned.root_offset)
        existing = _existing(filesystem, [*paths, WANTS, *links], temporary)
        commands = leftover_commands(filesystem, temporary) + write_script(rendered.tree, existing)
        for unit, link in zip(ENABLED_UNITS, links, strict=True):
            commands += ([f"rm {link}"] if link in existing else []) + [f"symlink {link} /etc/systemd/system/{unit}"]
        script = temporary / "overlay.debugfs"
        script.write_text("\n".join(commands) + "\n")
        errors = run(["debugfs", "-w", "-f", script, filesystem], capture=True, env=fixed_time,
                     cwd=rendered.tree).stderr.decode()
        problems = [line for line in errors.splitlines() if line.strip() and not line.startswith("debugfs ")]
        if problems:
            raise SysvmError(f"debugfs could not write the rendered tree: {problems[0]}")
        # e2fsck exits 1 when it only brought the free counts up to date, 0 when there was nothing to do.
        check = run(["e2fsck", "-f", "-y", filesystem], check=False, env=fixed_time)
        if check.returncode not in (0, 1):
            raise SysvmError(f"e2fsck found errors after writing the rendered tree (exit {check.returncode}; "
                             f"log: {log.current_log_path()})")
        script.unlink()
        (temporary / "lookup.debugfs").unlink()
        (temporary / "list.debugfs").unlink()
        os.utime(image, (when, when))
    log.say(f"overlay: {len(commands)} changes written into {result.image}")
    return result
