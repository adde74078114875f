"""sysvm diff on small real disks: an ext4 file system made by mkfs.ext4 in a partition made by sfdisk,
packed as sysvm packs a KVM artifact (qcow2, then bzip2), compared as artifacts and as release folders."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sysvm import cli

pytestmark = pytest.mark.host  # mkfs.ext4, sfdisk, qemu-img, lbzip2, debugfs; a tree owned by root

START = 1 << 20
KVM = "systemvmtemplate-4.20.0-x86_64-kvm.qcow2.bz2"
STATUS = "Package: {name}\nStatus: install ok installed\nArchitecture: {arch}\nVersion: {version}\n\n"


def image_tree(root: Path, packages: dict[str, str], hosts: str, passwd_mode: int, latest: str) -> None:
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("".join(
        STATUS.format(name=name, arch="all" if name == "tzdata" else "amd64", version=version)
        for name, version in packages.items()))
    (root / "etc").mkdir()
    (root / "etc/hosts").write_text(hosts)
    (root / "usr/bin").mkdir(parents=True)
    passwd = root / "usr/bin/passwd"
    passwd.write_bytes(b"\x7fELF\0binary")
    passwd.chmod(passwd_mode)
    (root / "opt/cloud/bin").mkdir(parents=True)
    (root / "opt/cloud/bin/latest").symlink_to(latest)


def kvm_artifact(root: Path, target: Path) -> Path:
    """`root` as the one ext4 partition of a 32 MiB disk, shipped as sysvm ships a KVM template."""
    raw = target.with_name(target.name + ".raw")
    with raw.open("wb") as handle:
        handle.truncate(32 << 20)
    subprocess.run(["sfdisk", "-q", str(raw)], input=f"start={START // 512}, type=83\n", text=True, check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), "-E", f"offset={START}", str(raw),
                    f"{((32 << 20) - START) >> 10}k"], check=True)
    qcow2 = target.with_suffix("")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    raw.unlink()
    subprocess.run(["lbzip2", "-f", str(qcow2)], check=True)
    return target


@pytest.fixture
def releases(tmp_path) -> tuple[Path, Path]:
    """Two release folders: the new one changes a package, adds one, edits /etc/hosts, makes passwd
    set-uid, points a link elsewhere and adds a file."""
    old_root, new_root = tmp_path / "old-root", tmp_path / "new-root"
    image_tree(old_root, {"dpkg": "1.21.22", "bash": "5.2.15-2", "tzdata": "2024a-0"}, "127.0.0.1 localhost\n", 0o755, "run.sh")
    image_tree(new_root, {"dpkg": "1.21.22", "bash": "5.2.15-2+b1", "tzdata": "2024a-0",
                "nfs-kernel-server": "1:2.6.2-4"},
               "127.0.0.1 localhost\n::1 localhost\n", 0o4755, "run2.sh")
    (new_root / "etc/exports").write_text("/export *(rw)\n")
    folders = tmp_path / "old", tmp_path / "new"
    for folder, root in zip(folders, (old_root, new_root), strict=True):
        folder.mkdir()
        kvm_artifact(root, folder / KVM)
    (folders[1] / "systemvmtemplate-4.20.0-x86_64-xen.vhd.bz2").write_bytes((folders[1] / KVM).read_bytes())
    return folders


def test_two_release_folders_show_packages_files_and_artifacts(releases, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    old, new = releases

    assert cli.main(["diff", "--json", str(old), str(new)]) == 1
    report = json.loads(capsys.readouterr().out)

    assert report["contents_of"] == "kvm x86_64"
    assert report["artifacts_added"] == ["xen x86_64"] and report["artifacts_removed"] == []
    assert report["artifacts"]["kvm x86_64"]["same_bytes"] is False
    assert report["packages_changed"] == {"bash": ["5.2.15-2", "5.2.15-2+b1"]}
    assert report["packages_added"] == {"nfs-kernel-server": "1:2.6.2-4"} and report["packages_removed"] == {}
    assert report["files_added"] == ["/etc/exports"] and report["files_removed"] == []
    changed = {change["path"]: change for change in report["files_changed"]}
    assert sorted(changed) == ["/etc/hosts", "/opt/cloud/bin/latest", "/usr/bin/passwd", "/var/lib/dpkg/status"]
    assert changed["/usr/bin/passwd"]["changes"] == ["mode 0755 → 4755"]  # rdump's copy has no set-uid bit
    assert changed["/opt/cloud/bin/latest"]["changes"] == ["target run.sh → run2.sh"]
    assert changed["/etc/hosts"]["changes"] == ["size 20 → 34 bytes"]
    assert "+::1 localhost\n" in changed["/etc/hosts"]["diff"]
    assert changed["/var/lib/dpkg/status"]["diff"] == ""  # not under /etc, /opt/cloud or /usr/local/cloud
    assert report["identical"] is False
    assert list((tmp_path / "output/build/tmp").iterdir()) == []  # the copies of both images are gone


def test_the_same_artifact_is_identical_without_being_read(releases, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    artifact = releases[0] / KVM
    copy = tmp_path / "copy" / KVM
    copy.parent.mkdir()
    copy.write_bytes(artifact.read_bytes())

    assert cli.main(["diff", str(artifact), str(copy)]) == 0
    shown = capsys.readouterr()
    assert shown.out.splitlines()[-2:] == ["artifact kvm: identical bytes", "identical"]
    assert "debugfs" not in shown.err


def test_a_repacked_artifact_differs_in_bytes_only(releases, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    artifact = releases[0] / KVM
    repacked = tmp_path / "repacked" / KVM
    repacked.parent.mkdir()
    subprocess.run(["lbzip2", "-d", "-k", "-c", str(artifact)], stdout=(tmp_path / "disk.qcow2").open("wb"), check=True)
    subprocess.run(["bzip2", "-1", "-c", str(tmp_path / "disk.qcow2")], stdout=repacked.open("wb"), check=True)

    assert cli.main(["diff", str(artifact), str(repacked)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("artifact kvm: ") and "bytes (" in lines[2]
    assert lines[3:] == ["different"]  # no package, no file changed


@pytest.mark.parametrize(("sides", "message"), [
    (("old", "new/" + KVM), "compare two artifacts or two release folders, not one of each"),
    (("old", "missing"), "missing: no such artifact or release folder"),
    (("old/" + KVM, "notes.txt"), "notes.txt: unknown artifact type (expected .qcow2.bz2, "),
])
def test_bad_arguments_get_one_line(releases, capsys, monkeypatch, tmp_path, sides, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not an artifact\n")
    with pytest.raises(SystemExit) as stopped:
        cli.main(["diff", *sides])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0], error
