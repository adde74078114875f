"""Where every stage reads and writes under output/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sysvm.config import ROOT


@dataclass(frozen=True)
class Workspace:
    """output/ and its folders. A variant keeps its own artifacts, verify results and logs while it shares
    the cache and the stage folders (whose names are content keys) with every other build."""

    root: Path = ROOT / "output"
    variant: str = ""

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

    def reusable(self, stage: str, *outputs: Path, force: bool = False) -> bool:
        """True (and said) when every output of a stage exists from an earlier build with the same key."""
        if force or not all(path.is_file() for path in outputs):
            return False
        from sysvm import log

        log.say(f"{stage}: up to date ({outputs[0].parent})")
        return True

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
