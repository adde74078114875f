"""Workspace: old stage folders are pruned, what a killed build left is removed by the next one, and clean
removes only what sysvm made."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from sysvm.errors import SysvmError
from sysvm.workspace import MARKER, Workspace, clean, disk_usage
from tests.test_cli import sysvm
from tests.test_fsutil import holder, kill

# What sysvm writes into output/, folders with a file in them; clean removes these (the cache with --all).
SYSVMS = ["build/render-0123456789abcdef/tree/etc/motd", "artifacts/md5sum.txt", "artifacts-arm64/md5sum.txt",
          "verify-trixie/summary.json", "logs/render.log", "logs-trixie-arm64/build.log", "bench.json",
          "bench-overlay/etc/sysvm-bench", "matrix.json", "fault-table-build.md", "fault-table-seed.md",
          "test-results.xml", "test-results-unit.xml", "test-results-image.xml", "test-tiers.json",
          "fault-results.xml", ".bench.json.4242.partial", ".test-tiers.json.4242.partial"]
USERS = ["notes.txt", "photos/cat.jpg", "artifacts.bak/md5sum.txt", ".build/x"]


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


def _fill(root: Path, *relatives: str) -> None:
    for relative in relatives:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(relative)


def _top(relatives: list[str]) -> list[str]:
    return sorted({relative.split("/")[0] for relative in relatives})


def test_clean_removes_what_sysvm_made_and_leaves_and_names_the_rest(workspace):
    workspace.mark()
    _fill(workspace.root, *SYSVMS, *USERS, "cache/chroots/bookworm/etc/os-release")

    cleaned = clean(workspace)

    assert sorted(path.name for path, _ in cleaned.removed) == _top(SYSVMS)
    assert all(size > 0 for _, size in cleaned.removed)
    assert sorted(path.name for path in cleaned.kept) == _top(USERS)
    assert cleaned.kept_cache == workspace.cache and not cleaned.unmarked
    assert sorted(path.name for path in workspace.root.iterdir()) == sorted([MARKER, "cache", *_top(USERS)])
    assert all((workspace.root / relative).read_text() == relative for relative in USERS)


def test_clean_all_takes_the_cache_and_the_folder_only_once_it_is_empty(workspace):
    workspace.mark()
    _fill(workspace.root, *SYSVMS, "cache/kvm-probe.json", "notes.txt")
    clean(workspace, everything=True)
    assert sorted(path.name for path in workspace.root.iterdir()) == [MARKER, "notes.txt"]

    (workspace.root / "notes.txt").unlink()
    _fill(workspace.root, "cache/kvm-probe.json")
    clean(workspace, everything=True)
    assert not workspace.root.exists()


def test_clean_refuses_an_unmarked_folder_holding_anything_not_sysvms(workspace):
    _fill(workspace.root, *SYSVMS, "notes.txt", "photos/cat.jpg", "thesis.tex", "zz.txt")
    with pytest.raises(SysvmError) as refused:
        clean(workspace, everything=True)
    assert str(refused.value) == (
        f"{workspace.root} was not made by sysvm (it has no {MARKER} marker and holds notes.txt, photos, "
        "thesis.tex and 1 more): nothing removed")
    assert all((workspace.root / relative).is_file() for relative in SYSVMS)


def test_clean_takes_an_older_sysvms_unmarked_folder_that_holds_only_sysvms_entries(workspace):
    _fill(workspace.root, *SYSVMS, "cache/kvm-probe.json")
    cleaned = clean(workspace, everything=True)
    assert cleaned.unmarked and len(cleaned.removed) == len(_top(SYSVMS)) + 1
    assert cleaned.removed_folder and not workspace.root.exists()


def test_clean_unlinks_a_symlinked_entry_and_leaves_what_it_points_to(workspace, tmp_path):
    elsewhere = tmp_path / "big-disk/cache"
    _fill(elsewhere, "chroots/bookworm/etc/os-release")
    workspace.mark()
    workspace.cache.symlink_to(elsewhere)
    clean(workspace, everything=True)
    assert not workspace.root.exists() and (elsewhere / "chroots/bookworm/etc/os-release").is_file()


def test_clean_refuses_an_output_that_is_a_file(workspace):
    workspace.root.write_text("not a folder")
    with pytest.raises(SysvmError) as refused:
        clean(workspace)
    assert str(refused.value) == f"{workspace.root}: not a folder, so not sysvm's output: nothing removed"
    with pytest.raises(SysvmError) as refused:
        workspace.mark()
    assert str(refused.value) == f"{workspace.root}: not a folder, so sysvm cannot write its output there"


def test_mark_never_writes_through_a_symlink_in_the_markers_place(workspace, tmp_path):
    host_file = tmp_path / "host-file"
    host_file.write_text("the host's\n")
    workspace.root.mkdir()
    workspace.marker.symlink_to(host_file)
    workspace.mark()
    assert host_file.read_text() == "the host's\n" and not workspace.marked()


def test_disk_usage_counts_a_sparse_files_blocks_and_a_hard_link_once(tmp_path):
    folder = tmp_path / "stage"
    folder.mkdir()
    with (folder / "disk.raw").open("wb") as disk:
        disk.truncate(1 << 30)  # 1 GiB long, nothing written
        disk.write(b"x" * (1 << 20))
    os.link(folder / "disk.raw", folder / "same-disk.raw")
    assert (1 << 20) <= disk_usage(folder) < (2 << 20)


def test_sysvm_clean_prints_what_it_removed_and_what_it_kept(tmp_path):
    workspace = Workspace(tmp_path / "output")
    workspace.mark()
    _fill(workspace.root, "build/rootfs-0123456789abcdef/rootfs.tar", "logs/rootfs.log", "cache/x",
          "notes.txt")
    result = sysvm(tmp_path, "clean")
    assert result.returncode == 0, result.stderr
    size = r"\(\d+\.\d (KiB|MiB)\)"
    expected = [rf"clean: removed {workspace.build} {size}", rf"clean: removed {workspace.logs} {size}",
                rf"clean: kept {workspace.cache} \(the download cache; --all removes it\)",
                rf"clean: kept {workspace.root / 'notes.txt'} \(not made by sysvm\)",
                r"clean: 2 entries removed, \d+\.\d KiB freed"]
    lines = result.stdout.splitlines()
    assert len(lines) == len(expected) and all(map(re.fullmatch, expected, lines)), result.stdout


def test_sysvm_clean_refuses_an_unmarked_folder_with_one_line(tmp_path):
    _fill(tmp_path / "output", "build/x", "notes.txt")
    result = sysvm(tmp_path, "clean", "--all")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"sysvm: error: {tmp_path / 'output'} was not made by sysvm (it has no {MARKER} "
                             "marker and holds notes.txt): nothing removed\n")
    assert (tmp_path / "output/build/x").is_file()


def test_sysvm_clean_all_of_an_empty_marked_folder_says_it_removed_the_folder(tmp_path):
    Workspace(tmp_path / "output").mark()
    result = sysvm(tmp_path, "clean", "--all")
    assert result.stdout == f"clean: removed {tmp_path / 'output'} itself (nothing else was in it)\n"
    assert list(tmp_path.iterdir()) == []
    nothing = f"clean: nothing of sysvm's to remove in {tmp_path / 'output'}\n"
    assert sysvm(tmp_path, "clean").stdout == nothing
