"""Workspace: old stage folders are pruned, and what a killed build left is removed by the next one."""

from __future__ import annotations

import os
import time

from sysvm.workspace import Workspace
from tests.test_fsutil import holder, kill


def _stage_folder(workspace: Workspace, name: str, used: float) -> None:
    folder = workspace.build / name
    folder.mkdir(parents=True)
    (folder / "rootfs.tar").write_text(name)
    os.utime(folder, (used, used))


def test_prune_keeps_the_two_most_recently_used_rootfs_folders(workspace):
    now = time.time()
    for age_days, key in ((30, "aaaaaaaaaaaaaaaa"), (1, "bbbbbbbbbbbbbbbb"), (90, "cccccccccccccccc"),
                          (0, "dddddddddddddddd")):
        _stage_folder(workspace, f"rootfs-{key}", now - age_days * 86400)
    _stage_folder(workspace, "disk-eeeeeeeeeeeeeeee", now - 90 * 86400)  # another stage: not this prune's business

    workspace.prune("rootfs")

    assert sorted(path.name for path in workspace.build.iterdir()) == [
        "disk-eeeeeeeeeeeeeeee", "rootfs-bbbbbbbbbbbbbbbb", "rootfs-dddddddddddddddd"]


def test_the_next_build_removes_what_a_killed_build_left_and_keeps_a_running_builds_files(workspace):
    finished_stage = workspace.build / "rootfs-0123456789abcdef"
    finished_stage.mkdir(parents=True)
    workspace.artifacts.mkdir(parents=True)
    finished_artifact = workspace.artifacts / "systemvmtemplate-4.20.0-kvm.qcow2.bz2"
    finished_artifact.write_text("artifact")
    # What each build holds at the moment of the kill: a stage folder and a cached chroot being made, the
    # report being written, export's staging folder, scratch space of the disk stage.
    held = [workspace.build / "rootfs-fedcba9876543210", workspace.cache / "chroots" / "bullseye-0011223344556677",
            workspace.artifacts / "build-report.json", f"scratch:{workspace.artifacts}:.staging-",
            f"scratch:{workspace.build / 'tmp'}:disk-"]
    with holder(*held) as (killed, killed_paths), holder(*held) as (running, running_paths):
        kill(killed)
        assert all(path.exists() for path in killed_paths)

        removed = workspace.remove_leftovers()

        assert sorted(removed) == sorted(killed_paths)
        assert not any(path.exists() for path in killed_paths)
        assert all(path.exists() for path in running_paths)
        assert finished_stage.is_dir() and finished_artifact.read_text() == "artifact"
        assert not (workspace.build / "rootfs-fedcba9876543210").exists()
        assert not (workspace.artifacts / "build-report.json").exists()
    assert sorted(workspace.remove_leftovers()) == sorted(running_paths)  # killed on the way out of `holder`
    assert workspace.remove_leftovers() == []


def test_a_cross_built_architecture_keeps_its_own_artifacts_beside_the_hosts(monkeypatch):
    from sysvm import config, tools
    from sysvm.workspace import Workspace

    monkeypatch.setattr(tools, "host_architecture", lambda: "amd64")
    native, cross = config.load(), config.load(None, ["debian.architecture=arm64"])
    assert Workspace.of(native).artifacts.name == "artifacts"
    assert Workspace.of(cross).artifacts.name == "artifacts-arm64"
    assert Workspace.of(cross, variant="trixie").logs.name == "logs-trixie-arm64"
    assert Workspace.of(cross).build == Workspace.of(native).build  # stage folders are shared: keys differ
