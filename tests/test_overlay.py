"""The overlay stage on a small real disk: files, folders, links, modes and enabled units land in ext4."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from sysvm import extfs
from sysvm.disk import PARTITION_START
from sysvm.errors import SysvmError
from sysvm.overlay import ENABLED_UNITS, WANTS, apply_overlay
from sysvm.packer import ProvisionedDisk
from sysvm.render import RenderedTree, render
from sysvm.workspace import Workspace
from tests.test_render import KEPT, user_layer, with_layers

pytestmark = pytest.mark.host  # mkfs.ext4, debugfs, e2fsck; render (root's tree)


def debugfs(image: Path, command: str) -> str:
    return subprocess.run(["debugfs", "-R", command, f"{image}?offset={PARTITION_START}"],
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture
def provisioned(tmp_path) -> ProvisionedDisk:
    """A disk like Packer leaves it: one ext4 partition after 1 MiB, with an /etc that has files, and /srv."""
    root = tmp_path / "root"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "srv").mkdir(mode=0o755)
    (root / "etc/ssh/sshd_config").write_text("Port 22\n")
    (root / "etc/systemd/system/multi-user.target.wants").mkdir(parents=True)
    # What the build's boot leaves after the cleanup script, up to its poweroff.
    (root / "var/log/journal/0123456789abcdef0123456789abcdef").mkdir(parents=True)
    (root / "var/log/journal/0123456789abcdef0123456789abcdef/system.journal").write_bytes(b"LPKSHHRH" * 512)
    (root / "var/log/apt").mkdir()
    (root / "var/log/syslog").write_text("build boot\n" * 1000)
    os.chown(root / "var/log/syslog", 0, 4)
    (root / "var/log/syslog").chmod(0o640)
    (root / "var/log/apt/history.log").write_text("Start-Date: 2026-12-04\n")
    (root / "var/log/empty.log").write_text("")
    (root / "var/lib/systemd").mkdir(parents=True)
    (root / "var/lib/systemd/random-seed").write_bytes(os.urandom(512))
    (root / "var/lib/dhcp").mkdir()
    (root / "var/lib/dhcp/dhclient.eth0.leases").write_text("lease {}\n")
    raw = tmp_path / "disk.raw"
    with raw.open("wb") as handle:
        handle.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), "-E", f"offset={PARTITION_START}", str(raw),
                    f"{(64 << 20) - PARTITION_START >> 10}k"], check=True)
    image = tmp_path / "systemvm.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(image)], check=True)
    return ProvisionedDisk("p" * 16, image, PARTITION_START)


@pytest.fixture
def rendered(tmp_path) -> RenderedTree:
    tree = tmp_path / "tree"
    (tree / "etc/ssh").mkdir(parents=True)
    (tree / "etc/ssh/sshd_config").write_text("Port 3922\n")
    (tree / "etc/systemd/system").mkdir(parents=True)
    for unit in ENABLED_UNITS:
        (tree / "etc/systemd/system" / unit).write_text("[Unit]\n")
    (tree / "opt/cloud/bin").mkdir(parents=True)
    script = tree / "opt/cloud/bin/run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    (tree / "opt/cloud/bin/latest").symlink_to("run.sh")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"files": []}))
    return RenderedTree("o" * 16, tree, manifest)


def test_the_rendered_tree_is_written_into_the_filesystem(provisioned, rendered, workspace):
    final = apply_overlay(provisioned, rendered, workspace)
    image = final.image
    assert debugfs(image, "cat /etc/ssh/sshd_config") == "Port 3922\n"
    stat = debugfs(image, "stat /opt/cloud/bin/run.sh")
    assert "Mode:  0755" in stat and "User:     0   Group:     0" in stat
    assert 'Fast link dest: "run.sh"' in debugfs(image, "stat /opt/cloud/bin/latest")
    for unit in ENABLED_UNITS:
        assert f'"/etc/systemd/system/{unit}"' in debugfs(image, f"stat {WANTS}/{unit}")
    fsck = subprocess.run(["e2fsck", "-fn", f"{image}?offset={PARTITION_START}"], capture_output=True)
    assert fsck.returncode == 0, fsck.stdout
    assert sorted(p.name for p in image.parent.iterdir()) == ["inputs.json", "systemvm.raw"]


def test_what_the_build_boot_left_is_cleared(provisioned, rendered, workspace):
    image = apply_overlay(provisioned, rendered, workspace).image
    filesystem = f"{image}?offset={PARTITION_START}"
    logs = extfs.tree(filesystem, "/var/log", workspace.root)
    assert {path: (entry.kind, entry.size) for path, entry in logs.items()} == {
        "/var/log/journal": ("folder", 0), "/var/log/apt": ("folder", 0), "/var/log/apt/history.log": ("file", 0),
        "/var/log/syslog": ("file", 0), "/var/log/empty.log": ("file", 0)}
    assert inode(image, "/var/log/syslog") == (0o640, 0, 4)  # emptied in place: rsyslog's mode and group stay
    assert extfs.listing(filesystem, ["/var/lib/systemd", "/var/lib/dhcp"], workspace.root) == {}
    fsck = subprocess.run(["e2fsck", "-fn", filesystem], capture_output=True)
    assert fsck.returncode == 0, fsck.stdout  # the punched blocks were given back


def test_second_run_is_up_to_date_and_a_change_makes_a_new_image(provisioned, rendered, workspace):
    first = apply_overlay(provisioned, rendered, workspace)
    assert apply_overlay(provisioned, rendered, workspace) == first
    changed = RenderedTree("c" * 16, rendered.tree, rendered.manifest)
    assert apply_overlay(provisioned, changed, workspace).image != first.image


@pytest.mark.parametrize("name", ["bad name", "bad\n!touch pwned"])
def test_a_tree_changed_after_render_cannot_add_debugfs_commands(name, provisioned, rendered, workspace):
    """Render refuses such names, naming their layer; the overlay stage refuses them again, should the tree
    have been changed since."""
    (rendered.tree / "etc" / name).write_text("x")
    with pytest.raises(SysvmError) as caught:
        apply_overlay(provisioned, rendered, workspace)
    character = repr(name[3])
    assert str(caught.value) == (f"rendered tree: {'/etc/' + name!r}: {character} is not allowed (paths and "
                                 "link targets carry no white space, control characters, double quotes or "
                                 "backslashes)")


def test_a_special_file_put_into_the_tree_after_render_is_refused(provisioned, rendered, workspace):
    os.mkfifo(rendered.tree / "etc/pipe")  # debugfs would wait on it forever
    with pytest.raises(SysvmError) as caught:
        apply_overlay(provisioned, rendered, workspace)
    assert str(caught.value) == (f"{rendered.tree}/etc/pipe: not a file, folder or link: "
                                 "debugfs cannot write it")


def test_modes_and_owners_reach_the_image_byte_for_byte(provisioned, tmp_path, workspace):
    """A user's layer rendered for real, then written into a small ext4 image made with mkfs.ext4 and read
    back with debugfs: each entry has the layer's mode and owner (special bits included), and a folder the
    image already has (/srv, /etc) keeps its own."""
    rendered = render(with_layers(user_layer(tmp_path)), workspace)
    image = apply_overlay(provisioned, rendered, workspace).image
    added = {path: kept for path, kept in KEPT.items() if path not in ("/srv", "/etc")}
    for path, (mode, uid, gid) in added.items():
        assert inode(image, path) == (mode, uid, gid), path
    assert inode(image, "/srv") == (0o755, 0, 0) != KEPT["/srv"]
    assert inode(image, "/etc") == (0o755, 0, 0)
    assert debugfs(image, "cat /srv/data") == "theirs\n"
    assert 'Fast link dest: "data"' in debugfs(image, "stat /srv/latest")


def inode(image: Path, path: str) -> tuple[int, int, int]:
    """(permission bits, uid, gid) of a path in the image, as debugfs reads them."""
    text = debugfs(image, f"stat {path}")
    mode = re.search(r"Mode:\s+(\d+)", text)
    owner = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", text)
    assert mode and owner, text
    return int(mode[1], 8), int(owner[1]), int(owner[2])


def test_the_same_inputs_give_the_same_image_at_any_time(provisioned, rendered, tmp_path):
    """Files are written with the provisioned disk's time, not the clock's: a stage redone later (after an
    interruption, say) gives the same bytes, and the image carries that time on to the export."""
    images = []
    for name in ("first", "second"):
        images.append(apply_overlay(provisioned, rendered, Workspace(tmp_path / name)).image)
        time.sleep(1.1)
    assert images[0].read_bytes() == images[1].read_bytes()
    when = int(provisioned.image.stat().st_mtime)
    assert images[0].stat().st_mtime == when
    assert f"mtime: 0x{when:08x}" in debugfs(images[0], "stat /opt/cloud/bin/run.sh")
