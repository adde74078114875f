"""The stage helper: a key made from named inputs, reuse or rebuild, and a rebuild that says which input changed."""

from __future__ import annotations

import json
import shutil

import pytest

from sysvm import config
from sysvm.build import render_only
from sysvm.cache import hash_tree, stage_key
from sysvm.stage import INPUTS, Stage, changes, reason
from sysvm.workspace import Workspace
from tests.terminal import messages

PACKAGES = ["curl", "tcpdump"]


def decision(stage: Stage, capsys, force: bool = False) -> tuple[bool, str]:
    """Whether the stage reuses its folder, and the line it says about it."""
    capsys.readouterr()
    reused = stage.reuse(stage.folder / "out", force=force)
    return reused, "\n".join(messages(capsys.readouterr().err))


def build(stage: Stage) -> None:
    with stage.building() as folder:
        (folder / "out").write_text("made\n")


def demo(workspace: Workspace, **inputs: object) -> Stage:
    return Stage.of(workspace, "demo", {"packages.common": PACKAGES, "disk.size_mib": 2048, **inputs})


def test_a_stage_is_built_once_then_reused_and_keeps_the_inputs_of_its_key(workspace, capsys):
    stage = demo(workspace)
    assert decision(stage, capsys) == (False, "demo: building (no earlier build)")
    build(stage)

    recorded = json.loads((stage.folder / INPUTS).read_text())
    assert recorded == {"stage": "demo", "key": stage.key, "inputs": {"packages.common": PACKAGES, "disk.size_mib": 2048}}
    assert stage_key("demo", recorded["inputs"]) == stage.key  # the key can be made again from its folder alone
    assert stage.folder == workspace.stage_dir("demo", stage.key)
    assert decision(demo(workspace), capsys) == (True, f"demo: up to date ({stage.folder})")
    assert decision(demo(workspace), capsys, force=True) == (False, "demo: rebuilding (--force)")


def test_a_rebuild_names_the_input_that_changed(workspace, capsys):
    build(demo(workspace))
    assert decision(demo(workspace, **{"packages.common": ["curl", "mtr-tiny"]}), capsys) == (
        False, "demo: rebuilding (packages.common changed: +mtr-tiny −tcpdump)")
    assert decision(demo(workspace, **{"disk.size_mib": 4096}), capsys) == (
        False, "demo: rebuilding (disk.size_mib changed: 2048 → 4096)")
    assert decision(demo(workspace, rootfs="0123456789abcdef"), capsys) == (
        False, "demo: rebuilding (rootfs added)")


def test_the_reason_is_given_against_the_most_recently_used_folder(workspace, capsys):
    small, large = demo(workspace), demo(workspace, **{"disk.size_mib": 4096})
    build(small)
    build(large)
    assert decision(small, capsys)[0]  # reused: now the most recently used
    assert decision(demo(workspace, **{"packages.common": ["curl"]}), capsys) == (
        False, "demo: rebuilding (packages.common changed: −tcpdump)")


def test_a_failed_build_leaves_no_folder_and_lost_outputs_are_said(workspace, capsys):
    stage = demo(workspace)
    with pytest.raises(RuntimeError), stage.building() as folder:
        (folder / "out").write_text("half\n")
        raise RuntimeError("the tool failed")
    assert not stage.folder.exists()
    assert decision(stage, capsys) == (False, "demo: building (no earlier build)")

    build(stage)
    build(demo(workspace, **{"disk.size_mib": 4096}))  # the most recently used, yet not what is compared
    (stage.folder / "out").unlink()
    assert decision(stage, capsys) == (False, "demo: rebuilding (out missing)")


def test_reasons_stay_on_one_line():
    before = {"consoleproxy": {"http_port": 80, "websocket_tls": False}, "roles": ["router", "secstorage"],
              "templates/common/": "a" * 64, "release": "bookworm", "layers": ["common"]}
    after = {"consoleproxy": {"http_port": 8000, "websocket_tls": True}, "roles": ["secstorage", "router"],
             "templates/common/": "b" * 64, "release": "trixie", "ssh_port": 3922}
    assert changes(before, after) == [
        "consoleproxy.http_port changed: 80 → 8000", "consoleproxy.websocket_tls changed: false → true",
        "roles changed (order)", "templates/common/ changed", "release changed: bookworm → trixie",
        "ssh_port added", "layers removed"]
    assert reason(before, after, False, []) == ("rebuilding (consoleproxy.http_port changed: 80 → 8000, "
                                                "consoleproxy.websocket_tls changed: false → true, "
                                                "roles changed (order) and 4 more)")
    many = {"packages.common": [f"p{number}" for number in range(10)]}
    assert changes({"packages.common": []}, many) == ["packages.common changed: +p0 +p1 +p2 +p3 and 6 more"]
    assert changes({"suite bookworm indexes": "a 1 Packages\nb 2 Packages.xz"},
                   {"suite bookworm indexes": "c 1 Packages\nd 2 Packages.xz"}) == ["suite bookworm indexes changed"]


def test_a_tree_hash_covers_single_files_and_leaves_out_byte_code(tmp_path):
    tree = tmp_path / "layer"
    (tree / "lib").mkdir(parents=True)
    (tree / "lib/setup.py").write_text("print('setup')\n")
    script = tmp_path / "keystore-setup"
    script.write_text("#!/bin/sh\n")
    before = hash_tree(tree, script)

    (tree / "lib/__pycache__").mkdir()
    (tree / "lib/__pycache__/setup.cpython-311.pyc").write_bytes(b"\x00")  # what importing the code leaves
    assert hash_tree(tree, script) == before
    script.write_text("#!/bin/sh\nexit 1\n")
    assert hash_tree(tree, script) != before
    script.chmod(0o755)
    assert hash_tree(tree, script) != hash_tree(tree, tmp_path / "missing")


@pytest.mark.host  # render gives the tree to root
def test_render_says_which_setting_or_tree_made_it_render_again(workspace, capsys, monkeypatch, tmp_path):
    def said(*overrides: str) -> str:
        capsys.readouterr()
        render_only(config.load(None, list(overrides)), workspace)
        return next(line for line in messages(capsys.readouterr().err) if line.startswith("render: "))

    assert said() == "render: building (no earlier build)"
    assert said() == f"render: up to date ({next(workspace.build.glob('render-*'))})"
    assert said("consoleproxy.http_port=8000") == "render: rebuilding (consoleproxy.http_port changed: 80 → 8000)"
    assert said("consoleproxy.http_port=8000").startswith("render: up to date")

    from sysvm import render as render_module

    templates = tmp_path / "templates"
    shutil.copytree(render_module.TEMPLATES, templates)
    (templates / "router/etc/motd.j2").write_text("router\n")
    monkeypatch.setattr(render_module, "TEMPLATES", templates)
    assert said("consoleproxy.http_port=8000") == "render: rebuilding (templates/router/ changed)"


def test_a_stage_after_another_names_the_stage_before_it(workspace, default_config, tmp_path, capsys):
    from sysvm.disk import disk_inputs
    from sysvm.rootfs import Rootfs

    def disk_stage(key: str, *overrides: str) -> Stage:
        rootfs = Rootfs(key, tmp_path / "rootfs.tar", tmp_path / "packages.txt")
        return Stage.of(workspace, "disk", disk_inputs(config.load(None, list(overrides)), rootfs))

    build(disk_stage("a" * 16))
    assert decision(disk_stage("b" * 16), capsys) == (False, f"disk: rebuilding (rootfs changed: {'a' * 16} → {'b' * 16})")
    assert decision(disk_stage("a" * 16, "disk.size_mib=4096"), capsys) == (
        False, f"disk: rebuilding (disk.size_mib changed: {default_config.disk.size_mib} → 4096)")


def test_the_rootfs_and_render_inputs_follow_their_settings_only(default_config):
    from sysvm.render import render_inputs
    from sysvm.rootfs import rootfs_inputs, suites

    def asked(loaded: config.Config) -> dict[str, object]:
        return rootfs_inputs(loaded, suites(loaded))

    websocket = config.load(None, ["consoleproxy.websocket_port=8081"])
    assert render_inputs(default_config) == render_inputs(config.load())
    assert changes(render_inputs(default_config), render_inputs(websocket)) == [
        "consoleproxy.websocket_port changed: 8080 → 8081"]
    assert asked(websocket) == asked(default_config)
    assert changes(asked(default_config), asked(config.load(None, ["packages.roles.consoleproxy=[tcpdump, mtr-tiny]"]))) == [
        "packages.roles.consoleproxy added"]  # tcpdump is asked for by packages.common already
    bullseye = changes(asked(default_config), asked(config.load(None, ["debian.release=bullseye"])))
    assert bullseye == ["debian.release changed: bookworm → bullseye", "apt sources changed",
                        "releases.bullseye.java_package added", "releases.bullseye.merge_usr added",
                        "architectures.amd64.usr_merged_folders added", "releases.bookworm.java_package removed",
                        "releases.bookworm.merge_usr removed"]
