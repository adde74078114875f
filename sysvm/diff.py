"""`sysvm diff OLD NEW`: what changed between two artifacts or two release folders, read without mounting.

An artifact's disk is unpacked (`verify.unpack_artifact`), made raw by qemu-img, and its root file system
is read by debugfs: `rdump` copies the files into a private scratch folder for their contents and link
targets, and `ls -p` of every folder gives each entry's mode and owner as the image has them (rdump's copy
loses the set-id bits). The dpkg database of that copy gives the packages.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sysvm import log
from sysvm.errors import SysvmError
from sysvm.extfs import Entry, listing
from sysvm.fsutil import remove_tree, scratch_dir
from sysvm.hypervisors import ARTIFACTS
from sysvm.process import output, run
from sysvm.sbom import paragraphs
from sysvm.verify import unpack_artifact

# Text files here get a unified diff; elsewhere a change shows as sizes and checksums.
TEXT_TREES = ("/etc/", "/opt/cloud/", "/usr/local/cloud/")
TEXT_LIMIT = 1 << 20  # larger files are not shown line by line
@dataclass
class Image:
    packages: dict[str, str]  # name (with :architecture when it is not the image's own) → version
    entries: dict[str, Entry]  # "/etc/hosts" → its entry
    tree: Path  # rdump's copy, for text diffs


def root_filesystem(raw: Path) -> str:
    """debugfs's name for the root file system of a raw disk: the largest partition."""
    table = json.loads(output(["sfdisk", "--json", raw])).get("partitiontable", {})
    sector = int(table.get("sectorsize", 512))
    partitions = table.get("partitions", [])
    if not partitions:
        raise SysvmError(f"{raw}: no partition table")
    largest = max(partitions, key=lambda partition: int(partition["size"]))
    return f"{raw}?offset={int(largest['start']) * sector}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def read_image(artifact: Path, scratch: Path) -> Image:
    """The packages and root file system of the disk in an artifact, copied under `scratch` (a private folder)."""
    disk, disk_format = unpack_artifact(artifact, scratch)
    raw = scratch / "disk.raw"
    run(["qemu-img", "convert", "-f", disk_format, "-O", "raw", disk, raw])
    if disk != artifact:
        disk.unlink()
    filesystem = root_filesystem(raw)
    tree = scratch / "root"
    tree.mkdir(mode=0o700)
    run(["debugfs", "-R", f'rdump / "{tree}"', filesystem], capture=True)
    folders = sorted("/" + os.path.relpath(top, tree).removeprefix(".") for top, _, _ in os.walk(tree))
    entries = listing(filesystem, folders, scratch)
    raw.unlink()
    files = [path for path, entry in entries.items() if entry.kind == "file"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        digests = dict(zip(files, pool.map(lambda path: _sha256(tree / path.lstrip("/")), files), strict=True))
    for path, entry in entries.items():
        copied = tree / path.lstrip("/")
        if entry.kind == "file":
            entries[path] = Entry(**{**asdict(entry), "content": digests[path]})
        elif entry.kind == "link":
            entries[path] = Entry(**{**asdict(entry), "content": str(copied.readlink())})
    status = tree / "var/lib/dpkg/status"
    if not status.is_file():
        raise SysvmError(f"{artifact}: its root file system has no /var/lib/dpkg/status")
    installed = [package for package in paragraphs(status.read_text(errors="replace"))
                 if package.get("status", "").endswith(" installed")]
    # dpkg's own architecture is the image's: other architectures' packages are named with theirs.
    own = next((package.get("architecture") for package in installed if package.get("package") == "dpkg"), None)
    packages = {package["package"] if package.get("architecture") in (own, "all")
                else f"{package['package']}:{package.get('architecture')}": package.get("version", "")
                for package in installed}
    return Image(packages, entries, tree)


def _describe(old: Entry, new: Entry) -> list[str]:
    changes = []
    if old.kind != new.kind:
        return [f"{old.kind} → {new.kind}"]
    if old.mode != new.mode:
        changes.append(f"mode {old.mode:04o} → {new.mode:04o}")
    if (old.uid, old.gid) != (new.uid, new.gid):
        changes.append(f"owner {old.uid}:{old.gid} → {new.uid}:{new.gid}")
    if old.kind == "link" and old.content != new.content:
        changes.append(f"target {old.content} → {new.content}")
    elif old.content != new.content:
        changes.append(f"size {old.size} → {new.size} bytes" if old.size != new.size else "content")
    return changes


def _text(path: Path) -> list[str] | None:
    if path.stat().st_size > TEXT_LIMIT:
        return None
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode().splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


@dataclass
class FileChange:
    path: str
    changes: list[str]
    diff: str = ""  # unified, for a text file under TEXT_TREES


@dataclass
class ArtifactChange:
    old: str
    new: str
    old_size: int
    new_size: int
    same_bytes: bool


@dataclass
class Report:
    old: str
    new: str
    artifacts: dict[str, ArtifactChange]  # by kind and architecture: "kvm x86_64"
    artifacts_added: list[str] = field(default_factory=list)
    artifacts_removed: list[str] = field(default_factory=list)
    contents_of: str = ""  # of release folders: the kind whose image contents were compared
    packages_added: dict[str, str] = field(default_factory=dict)
    packages_removed: dict[str, str] = field(default_factory=dict)
    packages_changed: dict[str, tuple[str, str]] = field(default_factory=dict)
    files_added: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)
    files_changed: list[FileChange] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return (all(change.same_bytes for change in self.artifacts.values()) and not self.artifacts_added
                and not self.artifacts_removed and not self.packages_added and not self.packages_removed
                and not self.packages_changed and not self.files_added and not self.files_removed
                and not self.files_changed)

    def as_json(self) -> str:
        return json.dumps({**asdict(self), "identical": self.identical}, indent=1) + "\n"

    def as_text(self) -> str:
        lines = [f"--- {self.old}", f"+++ {self.new}"]
        lines += [f"artifact added: {kind}" for kind in self.artifacts_added]
        lines += [f"artifact removed: {kind}" for kind in self.artifacts_removed]
        for kind, change in self.artifacts.items():
            grown = change.new_size - change.old_size
            lines.append(f"artifact {kind}: " + ("identical bytes" if change.same_bytes else
                                                 f"{change.old_size} → {change.new_size} bytes ({grown:+d})"))
        if self.contents_of:
            lines.append(f"image contents compared in the {self.contents_of} artifacts")
        lines += [f"package added: {name} {version}" for name, version in self.packages_added.items()]
        lines += [f"package removed: {name} {version}" for name, version in self.packages_removed.items()]
        lines += [f"package changed: {name} {old} → {new}" for name, (old, new) in self.packages_changed.items()]
        lines += [f"file added: {path}" for path in self.files_added]
        lines += [f"file removed: {path}" for path in self.files_removed]
        for change in self.files_changed:
            lines.append(f"file changed: {change.path}: {', '.join(change.changes)}")
            if change.diff:
                lines.append(change.diff.rstrip("\n"))
        lines.append("identical" if self.identical else "different")
        return "\n".join(lines) + "\n"


def compare_images(old: Image, new: Image, report: Report) -> None:
    """Packages and files added, removed and changed from `old` to `new`, into the report."""
    for path in sorted(old.entries.keys() & new.entries.keys()):
        before, after = old.entries[path], new.entries[path]
        if before == after or (before.kind == after.kind == "folder" and before.mode == after.mode
                               and (before.uid, before.gid) == (after.uid, after.gid)):
            continue
        change = FileChange(path, _describe(before, after))
        if before.kind == after.kind == "file" and path.startswith(TEXT_TREES) and before.content != after.content:
            lines = (_text(old.tree / path.lstrip("/")), _text(new.tree / path.lstrip("/")))
            if lines[0] is not None and lines[1] is not None:
                change.diff = "".join(difflib.unified_diff(lines[0], lines[1], f"old{path}", f"new{path}"))
        report.files_changed.append(change)
    report.files_added = sorted(new.entries.keys() - old.entries.keys())
    report.files_removed = sorted(old.entries.keys() - new.entries.keys())
    report.packages_added = {name: new.packages[name] for name in sorted(new.packages.keys() - old.packages.keys())}
    report.packages_removed = {name: old.packages[name] for name in sorted(old.packages.keys() - new.packages.keys())}
    report.packages_changed = {name: (old.packages[name], new.packages[name]) for name in sorted(
        old.packages.keys() & new.packages.keys()) if old.packages[name] != new.packages[name]}


def _kind(artifact: Path) -> str:
    """sysvm's name for the kind of an artifact (kvm, xen, ...), from its file name."""
    for name, kind in ARTIFACTS.items():
        if artifact.name.endswith((f".{kind.extension}", f".{kind.disk_extension}")):
            return name
    expected = ", ".join(f".{kind.extension}" for kind in ARTIFACTS.values())
    raise SysvmError(f"{artifact}: unknown artifact type (expected {expected})")


def _artifacts(folder: Path) -> dict[str, Path]:
    """A release folder's artifacts by kind and architecture (`kvm x86_64`): systemvmtemplate-<version>-
    <architecture>-<hypervisor>.<extension>, the architecture being the name's last but one part."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and any(path.name.endswith(f".{kind.extension}") for kind in ARTIFACTS.values()):
            parts = path.name.split("-")
            found[f"{_kind(path)} {parts[-2]}" if len(parts) > 2 else _kind(path)] = path
    if not found:
        raise SysvmError(f"{folder}: no artifact in it (a release folder holds systemvmtemplate-*.qcow2.bz2 ...)")
    return found


def _artifact_change(old: Path, new: Path) -> ArtifactChange:
    sizes = old.stat().st_size, new.stat().st_size
    return ArtifactChange(old.name, new.name, *sizes, sizes[0] == sizes[1] and _sha256(old) == _sha256(new))


def compare(old: Path, new: Path, scratch_parent: Path) -> Report:
    """Two artifacts, or two release folders (their artifacts, and the image contents of one kind in both,
    KVM's when there is one); the images are read only when some artifact's bytes differ."""
    for side in (old, new):
        if not side.exists():
            raise SysvmError(f"{side}: no such artifact or release folder")
    if old.is_dir() != new.is_dir():
        raise SysvmError(f"{old} and {new}: compare two artifacts or two release folders, not one of each")
    if old.is_dir():
        before, after = _artifacts(old), _artifacts(new)
        common = sorted(before.keys() & after.keys())
        if not common:
            raise SysvmError(f"{old} and {new}: no artifact of the same kind in both")
        report = Report(str(old), str(new), {kind: _artifact_change(before[kind], after[kind]) for kind in common},
                        sorted(after.keys() - before.keys()), sorted(before.keys() - after.keys()))
        report.contents_of = next((kind for kind in common if kind.startswith("kvm")), common[0])
        pair = before[report.contents_of], after[report.contents_of]
    else:
        report = Report(str(old), str(new), {_kind(new): _artifact_change(old, new)})
        pair = old, new
    if all(change.same_bytes for change in report.artifacts.values()):
        return report
    scratch = scratch_dir(scratch_parent, "diff-")
    try:
        images = []
        for side, artifact in zip(("old", "new"), pair, strict=True):
            with log.waiting(f"debugfs to read the {side} image ({artifact.name})"):
                (scratch / side).mkdir(mode=0o700)
                images.append(read_image(artifact, scratch / side))
        compare_images(*images, report)
    finally:
        remove_tree(scratch)
    return report
