"""The pipeline: config → render → rootfs → disk → packer → overlay → export, each stage skipped when up to date."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from sysvm import log, tools
from sysvm.config import Config
from sysvm.disk import build_disk
from sysvm.export import Artifacts, export
from sysvm.overlay import apply_overlay
from sysvm.packer import provision
from sysvm.render import render
from sysvm.rootfs import build_rootfs
from sysvm.workspace import Workspace

T = TypeVar("T")


@dataclass
class BuildResult:
    artifacts: Artifacts
    durations: dict[str, float] = field(default_factory=dict)


def render_only(config: Config, workspace: Workspace, force: bool = False) -> Path:
    with log.stage("render", workspace.logs):
        return render(config, workspace, force).tree


def build(config: Config, workspace: Workspace, force: bool = False) -> BuildResult:
    tools.require(["rootfs", "disk", "packer", "overlay", "export"], config)
    # What builds killed outright left (temporaries, staging and scratch folders); a running build's stay.
    leftovers = workspace.remove_leftovers()
    if leftovers:
        log.say(f"removed {len(leftovers)} leftovers of killed builds")
    durations: dict[str, float] = {}

    def timed(name: str, step: Callable[[], T]) -> T:
        started = time.monotonic()
        with log.stage(name, workspace.logs):
            value = step()
        durations[name] = round(time.monotonic() - started, 2)
        return value

    rendered = timed("render", lambda: render(config, workspace, force))
    rootfs = timed("rootfs", lambda: build_rootfs(config, workspace, force))
    disk = timed("disk", lambda: build_disk(config, rootfs, workspace, force))
    provisioned = timed("packer", lambda: provision(config, disk, workspace, force))
    final = timed("overlay", lambda: apply_overlay(provisioned, rendered, workspace, force))
    artifacts = timed("export", lambda: export(config, final, rendered, rootfs, workspace, durations, force))
    for stage in ("rootfs", "disk", "packer", "overlay"):  # each stage marked the folder it used
        workspace.prune(stage)
    return BuildResult(artifacts, durations)
