"""An ext4 file system's folders read with debugfs, without mounting it (sysvm diff, the overlay stage)."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from sysvm.errors import SysvmError
from sysvm.process import output

KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "folder", stat.S_IFLNK: "link", stat.S_IFCHR: "char device",
         stat.S_IFBLK: "block device", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}


@dataclass(frozen=True)
class Entry:
    """One path of an image's root file system."""

    kind: str
    mode: int  # permission bits with set-id and sticky bits
    uid: int
    gid: int
    size: int = 0  # of a file
    content: str = ""  # a file's sha256, a link's target


def listing(filesystem: str, folders: list[str], scratch: Path) -> dict[str, Entry]:
    """Mode and owner of every entry of the folders, from one debugfs run of `ls -p` (`/inode/mode/uid/gid/
    name/size/` per entry: a name holds no slash)."""
    script = scratch / "list.debugfs"
    for folder in folders:
        if '"' in folder or "\n" in folder:  # would end debugfs's quoted word or its line
            raise SysvmError(f"{folder!r}: a folder name debugfs cannot be asked about")
    script.write_text("".join(f'ls -p "{folder}"\n' for folder in folders))
    entries: dict[str, Entry] = {}
    folder = ""
    for line in output(["debugfs", "-f", script, filesystem]).splitlines():
        if line.startswith("debugfs: ls -p "):
            folder = line.removeprefix("debugfs: ls -p ").strip('"').rstrip("/")
            continue
        fields = line.split("/")
        if len(fields) != 8 or fields[5] in (".", ".."):
            continue
        mode = int(fields[2], 8)
        kind = KINDS.get(stat.S_IFMT(mode), "other")
        entries[f"{folder}/{fields[5]}"] = Entry(kind, stat.S_IMODE(mode), int(fields[3]), int(fields[4]),
                                                 int(fields[6] or 0) if kind == "file" else 0)
    return entries


def tree(filesystem: str, top: str, scratch: Path) -> dict[str, Entry]:
    """Every entry below the folder `top` (not following links), one debugfs run per level."""
    found: dict[str, Entry] = {}
    level = [top.rstrip("/") or "/"]
    while level:
        entries = listing(filesystem, level, scratch)
        found.update(entries)
        level = [path for path, entry in entries.items() if entry.kind == "folder"]
    return found
