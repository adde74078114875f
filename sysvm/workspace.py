"""Where every stage reads and writes under output/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sysvm.config import ROOT


@dataclass(frozen=True)
class Workspace:
    root: Path = ROOT / "output"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def build(self) -> Path:
        return self.root / "build"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def verify(self) -> Path:
        return self.root / "verify"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def stage_dir(self, stage: str, key: str) -> Path:
        return self.build / f"{stage}-{key}"


def clean(workspace: Workspace, everything: bool = False) -> None:
    from sysvm.fsutil import remove_tree

    for folder in (workspace.build, workspace.artifacts, workspace.verify, workspace.logs):
        remove_tree(folder)
    if everything:
        remove_tree(workspace.root)
