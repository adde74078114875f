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

        log.say(f"    {stage}: up to date ({outputs[0].parent})")
        return True

    def prune(self, stage: str, keep: int = 2) -> None:
        """Remove all but the `keep` most recently used folders of a stage (disk images are large)."""
        from sysvm.fsutil import remove_tree

        folders = sorted(self.build.glob(f"{stage}-*"), key=lambda path: path.stat().st_mtime, reverse=True)
        for folder in folders[keep:]:
            remove_tree(folder)


def clean(workspace: Workspace, everything: bool = False) -> None:
    from sysvm.fsutil import remove_tree

    for folder in (workspace.build, workspace.artifacts, workspace.verify, workspace.logs):
        remove_tree(folder)
    if everything:
        remove_tree(workspace.root)
