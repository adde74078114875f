"""Where every stage reads and writes under output/, and what `clean` may remove there."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sysvm.errors import SysvmError

if TYPE_CHECKING:
    from sysvm.config import Config

# The file that says sysvm uses an output/ folder: clean removes nothing from a folder without it (or one
# that holds only sysvm's own entries, as an older sysvm's output/ does).
MARKER = ".made-by-sysvm"
MARKER_TEXT = "sysvm writes here; `sysvm clean` removes only the entries sysvm makes and leaves the rest.\n"
CACHE = "cache"
# Every entry sysvm makes in output/: stage folders, each variant's artifacts, verify results and logs
# (artifacts-trixie-arm64), bench's and matrix's results and layer, the test commands' JUnit XML (one per
# tier, and an older sysvm's one for all), their summary and fault tables, and what atomic_path leaves beside
# any of them. The cache is one too, removed only with --all.
_OWN_NAMES = (r"(build|cache|(artifacts|verify|logs)(-[a-z0-9]+)*|bench\.json|bench-overlay|matrix\.json"
              r"|fault-table-[a-z]+\.md|test-results(-[a-z]+)?\.xml|test-tiers\.json|fault-results\.xml)")
OWN_ENTRY = re.compile(rf"{_OWN_NAMES}|\.{_OWN_NAMES}\.\d+\.(partial|old)")


@dataclass(frozen=True)
class Workspace:
    """output/ and its folders. A variant keeps its own artifacts, verify results and logs while it shares
    the cache and the stage folders (whose names are content keys) with every other build."""

    # output/ of the directory sysvm is run from (the checkout, for ./run invoke), made absolute so that
    # children started elsewhere (pytest in verify/) get the same paths.
    root: Path = field(default_factory=lambda: Path.cwd() / "output")
    variant: str = ""

    @classmethod
    def of(cls, config: Config, variant: str = "") -> Workspace:
        """The workspace of a configuration: an image of another architecture than the host's keeps its own
        artifacts, verify results and logs (output/artifacts-arm64/), so a cross build never replaces the
        host's artifacts, and the two sets can be published side by side."""
        from sysvm.tools import host_architecture

        architecture = config.debian.architecture
        parts = [variant, architecture if architecture != host_architecture() else ""]
        return cls(variant="-".join(part for part in parts if part))

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    def mark(self) -> None:
        """Make output/ if need be and mark it as sysvm's, before a command writes into it."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file, or a symlink to nowhere
            raise SysvmError(f"{self.root}: not a folder, so sysvm cannot write its output there") from None
        try:  # O_EXCL: an existing marker, or a symlink in its place, is never written through
            descriptor = os.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return
        with os.fdopen(descriptor, "w") as marker:
            marker.write(MARKER_TEXT)

    def marked(self) -> bool:
        return self.marker.is_file() and not self.marker.is_symlink()

    def _own(self, name: str) -> Path:
        return self.root / (f"{name}-{self.variant}" if self.variant else name)

    @property
    def cache(self) -> Path:
        return self.root / CACHE

    @property
    def build(self) -> Path:
        return self.root / "build"

    @property
    def artifacts(self) -> Path:
        return self._own("artifacts")

    @property
    def verify(self) -> Path:
        return self._own("verify")

    @property
    def logs(self) -> Path:
        return self._own("logs")

    def stage_dir(self, stage: str, key: str) -> Path:
        return self.build / f"{stage}-{key}"

    def prune(self, stage: str, keep: int = 2) -> None:
        """Remove all but the `keep` most recently used folders of a stage (disk images are large)."""
        from sysvm.fsutil import remove_tree

        folders = sorted(self.build.glob(f"{stage}-*"), key=lambda path: path.stat().st_mtime, reverse=True)
        for folder in folders[keep:]:
            remove_tree(folder)

    def remove_leftovers(self) -> list[Path]:
        """Remove what builds killed outright (SIGKILL, power loss) left behind; return what was removed.

        That is atomic_path temporaries beside stage folders, artifacts, verify files and cached chroots,
        scratch folders under build/tmp, and export's staging folders. Whatever belongs to a process that
        is still running (a concurrent build) stays.
        """
        from sysvm.fsutil import prune_leftovers, prune_scratch

        folders = [self.root, self.build, self.artifacts, self.verify, self.logs, self.cache]
        for parent in (self.cache, self.verify):
            if parent.is_dir():
                folders += sorted(path for path in parent.iterdir() if path.is_dir() and not path.name.startswith("."))
        removed = [path for folder in folders for path in prune_leftovers(folder)]
        removed += prune_scratch(self.build / "tmp")
        removed += prune_scratch(self.artifacts, ".staging-")
        return removed


@dataclass(frozen=True)
class Cleaned:
    """What clean did in output/."""

    removed: list[tuple[Path, int]]  # each entry removed, with the bytes its files took on disk
    kept: list[Path]  # entries sysvm did not make, left alone
    kept_cache: Path | None  # the download cache, kept without --all
    unmarked: bool  # output/ had no marker (an older sysvm's): cleaned because all its entries are sysvm's
    removed_folder: bool = False  # output/ itself went too (--all, and nothing else was left in it)


def _is_own(path: Path) -> bool:
    return OWN_ENTRY.fullmatch(path.name) is not None


def disk_usage(path: Path) -> int:
    """The bytes the files under a path take on disk (a sparse disk image counts what it holds), each inode
    once, without entering a mount below it (a killed chroot's /proc)."""
    from sysvm.fsutil import mounts_under

    real = path if path.is_symlink() else path.resolve()  # below it, every folder walked is a real one
    mounts = set(mounts_under(real)) if real.is_dir() else set()
    seen: set[tuple[int, int]] = set()
    total = 0
    pending = [real]
    while pending:
        current = pending.pop()
        try:
            info = current.lstat()
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            total += info.st_blocks * 512
            if stat.S_ISDIR(info.st_mode) and current not in mounts:
                pending.extend(current.iterdir())
        except FileNotFoundError:  # gone meanwhile (a build's temporary)
            continue
    return total


def _names(paths: list[Path], shown: int = 3) -> str:
    names = ", ".join(path.name for path in paths[:shown])
    return f"{names} and {len(paths) - shown} more" if len(paths) > shown else names


def clean(workspace: Workspace, everything: bool = False) -> Cleaned:
    """Remove the entries sysvm makes in output/ (the download cache only with `everything`), nothing else.

    A folder without the marker is cleaned only if every entry in it is one sysvm makes (an older sysvm
    wrote no marker); otherwise nothing is removed. With `everything`, the marker and the folder go too
    once nothing else is left in it.
    """
    from sysvm.fsutil import remove_tree

    root = workspace.root
    if not root.exists():
        return Cleaned([], [], None, unmarked=False)
    if not root.is_dir():
        raise SysvmError(f"{root}: not a folder, so not sysvm's output: nothing removed")
    entries = sorted(path for path in root.iterdir() if path.name != MARKER)
    foreign = [path for path in entries if not _is_own(path)]
    unmarked = not workspace.marked()
    if unmarked and foreign:
        raise SysvmError(f"{root} was not made by sysvm (it has no {MARKER} marker and holds "
                         f"{_names(foreign)}): nothing removed")
    removed = []
    kept_cache = None
    for path in entries:
        if not _is_own(path):
            continue
        if path.name == CACHE and not everything:
            kept_cache = path
            continue
        size = disk_usage(path)
        remove_tree(path)
        removed.append((path, size))
    removed_folder = False
    if everything and not foreign:
        remove_tree(workspace.marker)
        if not root.is_symlink() and not os.path.ismount(root):
            root.rmdir()
            removed_folder = True
    return Cleaned(removed, foreign, kept_cache, unmarked, removed_folder)
