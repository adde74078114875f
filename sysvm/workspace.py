"""Where every stage reads and writes under output/."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sysvm.config import Config


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

    def _own(self, name: str) -> Path:
        return self.root / (f"{name}-{self.variant}" if self.variant else name)

    @property
    def cache(self) -> Path:
        return self.root / "cache"

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


def clean(workspace: Workspace, everything: bool = False) -> None:
    from sysvm.fsutil import remove_tree

    for folder in (workspace.build, workspace.artifacts, workspace.verify, workspace.logs):
        remove_tree(folder)
    if everything:
        remove_tree(workspace.root)
