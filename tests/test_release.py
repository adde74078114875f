"""sysvm release on two release folders made by the real export stage, one per architecture, from a small
image: the merged folder's lists, metadata.ini (4.20.1's kvm-<arch> sections), packages and SPDX document
(checked by spdx-tools), and the folders it refuses."""

from __future__ import annotations

import configparser
import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from sysvm import cli, config, export
from sysvm.overlay import FinalImage
from sysvm.render import render
from sysvm.rootfs import Rootfs
from sysvm.workspace import Workspace
from tests.disks import empty_qcow2
from tests.rootfs_tar import write_rootfs_tar
from tests.test_metadata import UPSTREAM_SCRIPTS, run_upstream, tree_script

pytestmark = pytest.mark.host  # qemu-img, lbzip2, render's tree owned by root


def release_folder(tmp_path: Path, architecture: str, version: str = "4.20.1", hypervisors: str = "kvm") -> Path:
    """One machine's output/artifacts: the export of a small image for `architecture`."""
    root = tmp_path / f"{architecture}-{version}-{hypervisors.replace(', ', '-')}"
    root.mkdir()
    image = empty_qcow2(root / "systemvm.qcow2", "32M")
    subprocess.run(["qemu-io", "-c", f"write -P {len(architecture)} 1M 1M", str(image)], check=True,
                   capture_output=True)
    tarball, packages = write_rootfs_tar(root)
    workspace = Workspace(root / "output")
    settings = [f"cloudstack.version={version}", f"debian.architecture={architecture}",
                f"export.hypervisors=[{hypervisors}]"]
    cfg = config.load(None, settings)
    export.export(cfg, FinalImage("k" * 16, image), render(cfg, workspace), Rootfs("r" * 16, tarball, packages),
                  workspace, {})
    return workspace.artifacts


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    return release_folder(tmp_path, "amd64"), release_folder(tmp_path, "arm64")


def test_two_architectures_become_one_release(folders, tmp_path, capsys):
    out = tmp_path / "4.20"
    assert cli.main(["release", str(out), *map(str, folders)]) == 0
    assert capsys.readouterr().out.strip() == str(out)

    names = ["systemvmtemplate-4.20.1-aarch64-kvm.qcow2.bz2", "systemvmtemplate-4.20.1-x86_64-kvm.qcow2.bz2"]
    assert sorted(path.name for path in out.iterdir()) == sorted(
        [*names, "md5sum.txt", "sha512sum.txt", "metadata.ini", "packages.txt", "sbom.spdx.json", "build-report.json"])
    for name in names:
        digest = hashlib.sha512((out / name).read_bytes()).hexdigest()
        assert f"{digest}  {name}\n" in (out / "sha512sum.txt").read_text()
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string((out / "metadata.ini").read_text())
    assert ini.sections()[:3] == ["default", "kvm-x86_64", "kvm-aarch64"]
    assert ini["kvm-aarch64"]["filename"] == names[0] and ini["kvm-aarch64"]["arch"] == "aarch64"
    assert ini["kvm-aarch64"]["checksum"] == hashlib.md5((out / names[0]).read_bytes()).hexdigest()
    assert ini["kvm-x86_64"]["checksum"] == hashlib.md5((out / names[1]).read_bytes()).hexdigest()

    document = parse_file(str(out / "sbom.spdx.json"))
    assert validate_full_spdx_document(document) == []
    ids = {package.spdx_id for package in document.packages}
    assert {"SPDXRef-artifact-kvm-x86.5F64", "SPDXRef-artifact-kvm-aarch64"} <= ids
    report = json.loads((out / "build-report.json").read_text())
    assert sorted(report["reports"]) == ["aarch64", "x86_64"] and sorted(report["artifacts"]) == names


def test_the_merged_metadata_ini_is_what_templateconfig_writes_for_both_architectures(tmp_path):
    """CloudStack's templateConfig.sh (of the tree beside the checkout) run on the merged checksum lists,
    every template it publishes built: x86_64 for each hypervisor, aarch64 for KVM."""
    version = UPSTREAM_SCRIPTS[-1][1]
    everything = "kvm, xen, vmware, hyperv, ovm"  # the same setting on both machines; arm64 builds KVM's only
    inputs = [release_folder(tmp_path, architecture, version, everything) for architecture in ("amd64", "arm64")]
    out = tmp_path / "published"
    assert cli.main(["release", str(out), *map(str, inputs)]) == 0
    sums = {algorithm: dict(reversed(line.split("  ")) for line in (out / f"{algorithm}sum.txt").read_text().splitlines())
            for algorithm in ("md5", "sha512")}
    files = {name: {algorithm: sums[algorithm][name] for algorithm in sums} for name in sums["sha512"]}
    scripts = tmp_path / "upstream"
    scripts.mkdir()
    assert (out / "metadata.ini").read_text() == run_upstream(tree_script(scripts), version, files)


def test_one_folder_gives_its_own_metadata_ini_back(folders, tmp_path):
    out = tmp_path / "single"
    assert cli.main(["release", str(out), str(folders[0])]) == 0
    assert (out / "metadata.ini").read_text() == (folders[0] / "metadata.ini").read_text()  # templateConfig.sh's layout


@pytest.mark.parametrize("case", ["other-version", "same-architecture", "changed-artifact", "not-a-release",
                                  "out-not-empty"])
def test_folders_that_cannot_make_one_release_are_refused(folders, tmp_path, capsys, case):
    amd64, arm64 = folders
    out = tmp_path / "out"
    if case == "other-version":
        inputs, message = [amd64, release_folder(tmp_path, "arm64", "4.20.2")], "CloudStack 4.20.2, but"
    elif case == "same-architecture":
        inputs, message = [amd64, amd64], "both x86_64"
    elif case == "changed-artifact":
        with (arm64 / "systemvmtemplate-4.20.1-aarch64-kvm.qcow2.bz2").open("ab") as handle:
            handle.write(b"\0")
        inputs, message = [amd64, arm64], "sha512 checksum mismatch"
    elif case == "not-a-release":
        inputs, message = [amd64, tmp_path], f"{tmp_path}: not a release folder (no build-report.json)"
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine\n")
        inputs, message = [amd64, arm64], "exists and is not an empty folder"
    capsys.readouterr()  # what the exports above said
    with pytest.raises(SystemExit) as stopped:
        cli.main(["release", str(out), *map(str, inputs)])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0], error
    assert (out / "notes.txt").read_text() == "mine\n" if case == "out-not-empty" else not out.exists()
