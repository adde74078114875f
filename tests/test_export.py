"""Export stage on a small real image: names, formats, OVA layout, checksums, metadata.ini, report, caching,
interruption."""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import struct
import subprocess
import tarfile
import time
import xml.etree.ElementTree as ElementTree
import zipfile
from pathlib import Path

import pytest

from sysvm import config, export, signing, tools
from sysvm.errors import SysvmError
from sysvm.imageinfo import header_virtual_size
from sysvm.overlay import FinalImage
from sysvm.ovf import OVF_NS, VirtualSystem, descriptor
from sysvm.render import render
from sysvm.rootfs import Rootfs
from sysvm.stage import as_recorded, changes, key_of
from sysvm.workspace import Workspace
from tests.disks import empty_qcow2
from tests.rootfs_tar import INSTALLED, write_rootfs_tar
from tests.terminal import messages

MIB = 2**20


@pytest.fixture
def provisioned(tmp_path) -> tuple[FinalImage, Rootfs]:
    image = empty_qcow2(tmp_path / "systemvm.qcow2", "48M")
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 2M", str(image)], check=True, capture_output=True)
    tarball, packages = write_rootfs_tar(tmp_path)
    return FinalImage("k" * 16, image), Rootfs("r" * 16, tarball, packages)


def test_names_follow_the_version_as_upstream():
    default = config.load()  # 4.20.0: the architecture is in the name
    assert export.artifact_name(default, "kvm") == "systemvmtemplate-4.20.0-x86_64-kvm.qcow2.bz2"
    assert export.artifact_name(default, "vmware") == "systemvmtemplate-4.20.0-x86_64-vmware.ova"
    assert export.artifact_name(default, "xen") == "systemvmtemplate-4.20.0-x86_64-xen.vhd.bz2"
    assert export.artifact_name(default, "hyperv") == "systemvmtemplate-4.20.0-x86_64-hyperv.vhd.zip"
    assert export.artifact_name(default, "ovm") == "systemvmtemplate-4.20.0-x86_64-ovm.raw.bz2"
    older = config.load(None, ["cloudstack.version=4.19.1"])
    assert export.artifact_name(older, "kvm") == "systemvmtemplate-4.19.1-kvm.qcow2.bz2"
    assert export.artifact_name(older, "ovm") == "systemvmtemplate-4.19.1-ovm.raw.bz2"
    newer = config.load(None, ["cloudstack.version=4.22.0.1"])
    assert export.artifact_name(newer, "xen") == "systemvmtemplate-4.22.0.1-x86_64-xen.vhd.bz2"
    mine = config.load(None, ["export.name_pattern=sysvm-{hypervisor}-{version}"])
    assert export.artifact_name(mine, "kvm") == "sysvm-kvm-4.20.0.qcow2.bz2"


@pytest.mark.host
def test_export_makes_every_artifact_with_checksums_and_report(provisioned, workspace, tmp_path):
    disk, rootfs = provisioned
    cfg = config.load()
    result = export.export(cfg, disk, render(cfg, workspace), rootfs, workspace, {"rootfs": 1.0})
    folder = workspace.artifacts
    names = {h: export.artifact_name(cfg, h) for h in cfg.export.hypervisors}
    assert {p.name for p in folder.iterdir()} == {*names.values(), "md5sum.txt", "sha512sum.txt",
                                                  "packages.txt", "build-report.json", "metadata.ini",
                                                  "sbom.spdx.json"}
    assert result.metadata == folder / "metadata.ini"
    for algorithm, listing in (("md5", "md5sum.txt"), ("sha512", "sha512sum.txt")):
        lines = dict(reversed(line.split("  ")) for line in (folder / listing).read_text().splitlines())
        for name in names.values():
            assert lines[name] == hashlib.new(algorithm, (folder / name).read_bytes()).hexdigest()
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["lbzip2", "-d", "-k", "-c", str(folder / names["kvm"])], check=True,
                   stdout=(unpacked / "kvm.qcow2").open("wb"))
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(unpacked / "kvm.qcow2")],
                                     capture_output=True, check=True).stdout)
    assert info["format"] == "qcow2" and info["format-specific"]["data"]["compat"] == "0.10"
    subprocess.run(["qemu-img", "check", str(unpacked / "kvm.qcow2")], check=True, capture_output=True)
    subprocess.run(["lbzip2", "-d", "-c", str(folder / names["xen"])], check=True,
                   stdout=(unpacked / "xen.vhd").open("wb"))
    assert header_virtual_size(unpacked / "xen.vhd", "vhd") == 48 * MIB  # force_size: no CHS rounding
    assert subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "vpc", str(disk.image),
                           str(unpacked / "xen.vhd")], capture_output=True).returncode == 0
    report = json.loads(result.report.read_text())
    assert report["export_inputs"] == as_recorded(export.export_inputs(cfg, disk))
    assert report["export_key"] == key_of("export", report["export_inputs"])
    assert report["virtual_size"] == 48 * MIB and report["durations_s"]["rootfs"] == 1.0
    assert set(report["artifacts"]) == set(names.values())
    assert report["tools"]["qemu-img"].startswith("qemu-img version")
    assert report["sbom"] == {"file": "sbom.spdx.json", "format": "SPDX-2.3", "packages": len(INSTALLED)}
    in_sbom = json.loads((folder / "sbom.spdx.json").read_text())
    assert {(p["name"], tuple(c["checksumValue"] for c in p["checksums"])) for p in in_sbom["packages"]
            if "packageFileName" in p} == {(name, (info["md5"], info["sha512"]))
                                           for name, info in report["artifacts"].items()}
    assert report["name_pattern"] == "systemvmtemplate-{version}-{arch}-{hypervisor}"
    ini = (folder / "metadata.ini").read_text()
    assert report["metadata"] == {"file": "metadata.ini", "format_from_version": "4.20.0",
                                  "sha512": hashlib.sha512(ini.encode()).hexdigest(),
                                  "sections": ["default", "kvm", "vmware", "xenserver", "hyperv", "lxc", "ovm3"]}


def _sums(path) -> dict[str, str]:
    return dict(reversed(line.split("  ")) for line in path.read_text().splitlines())


@pytest.mark.host
def test_metadata_of_a_default_4_20_0_build_matches_the_checksum_lists(provisioned, workspace):
    disk, rootfs = provisioned
    cfg = config.load()
    export.export(cfg, disk, render(cfg, workspace), rootfs, workspace, {})
    folder = workspace.artifacts
    text = (folder / "metadata.ini").read_text()
    print(text)  # shown with -s: the file a 4.20.0 build writes
    ini = configparser.ConfigParser()
    ini.read_string(text)
    md5 = _sums(folder / "md5sum.txt")
    assert ini["default"]["version"] == "4.20.0.0"
    for section, hypervisor in (("kvm", "kvm"), ("vmware", "vmware"), ("xenserver", "xen"), ("hyperv", "hyperv"),
                                ("lxc", "kvm")):
        name = export.artifact_name(cfg, hypervisor)
        assert ini[section]["filename"] == name and (folder / name).is_file()
        # 4.20.0's management server compares MD5 digests (SHA-512 from 4.22.0).
        assert ini[section]["checksum"] == md5[name] == hashlib.md5((folder / name).read_bytes()).hexdigest()
        assert ini[section]["downloadurl"] == f"https://download.cloudstack.org/systemvm/4.20/{name}"
        assert ini[section]["templatename"] == f"systemvm-{section}-4.20.0-x86_64"
        assert ini[section]["arch"] == "x86_64"
    assert ini["ovm3"]["checksum"] == ""  # not built: listed because 4.20.0 reads every section


@pytest.mark.host
def test_ovm_raw_image_with_sha512_metadata_for_4_22(provisioned, workspace, tmp_path):
    disk, rootfs = provisioned
    cfg = config.load(None, ["cloudstack.version=4.22.0", "export.hypervisors=[kvm, ovm]"])
    export.export(cfg, disk, render(cfg, workspace), rootfs, workspace, {})
    folder = workspace.artifacts
    ovm = folder / "systemvmtemplate-4.22.0-x86_64-ovm.raw.bz2"
    assert export.artifact_name(cfg, "ovm") == ovm.name
    raw = tmp_path / "ovm.raw"
    subprocess.run(["bunzip2", "-c", str(ovm)], check=True, stdout=raw.open("wb"))  # plain bzip2 reads it
    assert raw.stat().st_size == 48 * MIB
    assert subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(disk.image), str(raw)],
                          capture_output=True).returncode == 0
    sha512 = _sums(folder / "sha512sum.txt")
    assert sha512[ovm.name] == hashlib.sha512(ovm.read_bytes()).hexdigest()
    assert ovm.name in json.loads((folder / "build-report.json").read_text())["artifacts"]
    ini = configparser.ConfigParser()
    ini.read_string((folder / "metadata.ini").read_text())
    assert ini.sections() == ["default", "kvm-x86_64", "lxc", "ovm3"]  # only what was built
    assert ini["ovm3"]["checksum"] == sha512[ovm.name]
    assert ini["ovm3"]["filename"] == ovm.name
    assert ini["ovm3"]["guestos"] == "Debian GNU/Linux 12 (64-bit)"
    assert ini["kvm-x86_64"]["checksum"] == ini["lxc"]["checksum"] == sha512[export.artifact_name(cfg, "kvm")]


@pytest.mark.host
def test_a_signing_key_file_signs_both_checksum_lists(provisioned, workspace, key, tmp_path, monkeypatch):
    disk, rootfs = provisioned
    monkeypatch.setenv("GNUPGHOME", str(tmp_path / "nowhere"))  # the key comes from its file only
    cfg = config.load(None, ["export.hypervisors=[kvm]", f"export.signing_key={key.secret_file}"])
    export.export(cfg, disk, render(cfg, workspace), rootfs, workspace, {})
    folder = workspace.artifacts
    report = json.loads((folder / "build-report.json").read_text())
    assert report["signatures"] == {"key": key.fingerprint, "files": ["md5sum.txt.asc", "sha512sum.txt.asc"]}
    for name in ("md5sum.txt", "sha512sum.txt"):
        assert signing.check(folder / name, key.public_file) == key.fingerprint
    assert report["export_inputs"]["export.signing_key"] == str(key.secret_file)

    unsigned = config.load(None, ["export.hypervisors=[kvm]"])
    export.export(unsigned, disk, render(unsigned, workspace), rootfs, workspace, {})
    assert not list(folder.glob("*.asc"))  # a signature of an earlier export never stays beside new lists
    assert json.loads((folder / "build-report.json").read_text())["signatures"] is None


@pytest.mark.host
def test_metadata_settings_rewrite_metadata_ini_without_remaking_artifacts(provisioned, workspace, monkeypatch):
    disk, rootfs = provisioned
    cfg = config.load(None, ["export.hypervisors=[kvm]", "cloudstack.version=4.22.0"])
    export.export(cfg, disk, render(cfg, workspace), rootfs, workspace, {})
    folder = workspace.artifacts
    kvm = folder / export.artifact_name(cfg, "kvm")
    made = kvm.stat().st_mtime_ns
    monkeypatch.setattr(export, "_make_artifact", lambda *a: pytest.fail("an artifact was remade"))
    moved = config.load(None, ["export.hypervisors=[kvm]", "cloudstack.version=4.22.0",
                               "export.download_url=https://templates.example/{version}/", "debian.release=trixie"])
    export.export(moved, disk, render(moved, workspace), rootfs, workspace, {})
    ini = configparser.ConfigParser()
    text = (folder / "metadata.ini").read_text()
    ini.read_string(text)
    assert ini["kvm-x86_64"]["downloadurl"] == f"https://templates.example/4.22.0/{kvm.name}"
    report = json.loads((folder / "build-report.json").read_text())
    assert report["metadata"]["sha512"] == hashlib.sha512(text.encode()).hexdigest()
    assert report["inputs"]["export"]["download_url"] == "https://templates.example/{version}/"
    assert kvm.stat().st_mtime_ns == made
    assert ini["kvm-x86_64"]["guestos"] == "Debian GNU/Linux 13 (64-bit)"


@pytest.mark.host
def test_ova_layout_descriptor_and_manifest(provisioned, workspace):
    disk, rootfs = provisioned
    cfg = config.load(None, ["export.hypervisors=[vmware]"])
    export.export(cfg, disk, render(cfg, workspace), rootfs, workspace, {})
    ova = workspace.artifacts / export.artifact_name(cfg, "vmware")
    with tarfile.open(ova) as archive:
        members = archive.getmembers()
        assert [m.name.rsplit(".", 1)[1] for m in members] == ["ovf", "mf", "vmdk"]
        contents = {m.name: archive.extractfile(m).read() for m in members}
    ovf_name, mf_name, vmdk_name = (m.name for m in members)
    envelope = ElementTree.fromstring(contents[ovf_name])
    ns = {"ovf": OVF_NS, "rasd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
          "vssd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"}
    file_ref = envelope.find("ovf:References/ovf:File", ns)
    assert file_ref.get(f"{{{OVF_NS}}}href") == vmdk_name
    assert int(file_ref.get(f"{{{OVF_NS}}}size")) == len(contents[vmdk_name])
    disk_element = envelope.find("ovf:DiskSection/ovf:Disk", ns)
    assert disk_element.get(f"{{{OVF_NS}}}capacity") == "48"
    assert disk_element.get(f"{{{OVF_NS}}}format").endswith("#streamOptimized")
    assert envelope.find(".//vssd:VirtualSystemType", ns).text == "vmx-13"  # as upstream since 4.20
    assert envelope.find(".//ovf:OperatingSystemSection", ns).get(f"{{{OVF_NS}}}id") == "101"
    subtypes = {item.find("rasd:ResourceType", ns).text: (item.find("rasd:ResourceSubType", ns).text
                                                          if item.find("rasd:ResourceSubType", ns) is not None else None)
                for item in envelope.iter(f"{{{OVF_NS}}}Item")}
    assert subtypes["6"] == "lsilogic" and "5" in subtypes and "15" in subtypes and "17" in subtypes
    manifest = dict(line.split("= ") for line in contents[mf_name].decode().splitlines())
    assert manifest[f"SHA256({ovf_name})"] == hashlib.sha256(contents[ovf_name]).hexdigest()
    assert manifest[f"SHA256({vmdk_name})"] == hashlib.sha256(contents[vmdk_name]).hexdigest()
    assert contents[vmdk_name][:4] == b"KDMV"


@pytest.mark.host
def test_the_same_image_gives_the_same_bytes_in_every_format(provisioned, tmp_path):
    """Two exports of one image, a second apart: identical artifacts. Another image time changes what
    records it (VHD's footer, VMDK's CID, the zip entry's date) and nothing else."""
    disk, rootfs = provisioned
    cfg = config.load(None, ["export.hypervisors=[kvm, xen, vmware, hyperv, ovm]"])

    def exported(folder: str) -> dict[str, str]:
        workspace = Workspace(tmp_path / folder)
        export.export(cfg, disk, render(cfg, workspace), rootfs, workspace, {})
        return _sums(workspace.artifacts / "sha512sum.txt")

    first = exported("first")
    time.sleep(1.1)
    assert exported("second") == first and len(first) == 5
    later = int(disk.image.stat().st_mtime) // 2 * 2 + 86400  # even: a zip keeps seconds in steps of 2
    os.utime(disk.image, (later, later))
    moved = exported("later")
    changed = {export.artifact_name(cfg, h) for h in ("xen", "vmware", "hyperv")}
    assert {name for name in first if moved[name] != first[name]} == changed
    vhd = tmp_path / "xen.vhd"
    subprocess.run(["lbzip2", "-d", "-c", str(tmp_path / "later/artifacts" / export.artifact_name(cfg, "xen"))],
                   check=True, stdout=vhd.open("wb"))
    data = vhd.read_bytes()
    assert data[:512] == data[-512:] and struct.unpack(">I", data[24:28])[0] == later - export.VHD_EPOCH
    assert subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "vpc", str(disk.image), str(vhd)],
                          capture_output=True).returncode == 0  # qemu-img checks the footer's checksum too
    with tarfile.open(tmp_path / "later/artifacts" / export.artifact_name(cfg, "vmware")) as archive:
        member = archive.getmembers()[2]
        archive.extract(member, tmp_path, filter="data")
    assert re.search(rb"^CID=[0-9a-f]{8}$", (tmp_path / member.name).read_bytes()[:65536], re.MULTILINE)
    assert subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "vmdk", str(disk.image),
                           str(tmp_path / member.name)], capture_output=True).returncode == 0
    with zipfile.ZipFile(tmp_path / "later/artifacts" / export.artifact_name(cfg, "hyperv")) as archive:
        assert archive.testzip() is None
        assert archive.infolist()[0].date_time == time.gmtime(later)[:6]


def test_descriptor_escapes_names():
    text = descriptor(VirtualSystem("a&b", "a&b.vmdk", 10, MIB))
    ElementTree.fromstring(text)


def test_hardware_version_is_a_setting_for_older_esxi():
    ns = {"vssd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"}
    for version, expected in ((11, "vmx-11"), (7, "vmx-07"), (13, "vmx-13")):
        envelope = ElementTree.fromstring(descriptor(VirtualSystem("v", "v.vmdk", 10, MIB, hardware_version=version)))
        assert envelope.find(".//vssd:VirtualSystemType", ns).text == expected
    image = FinalImage("k" * 16, Path("systemvm.raw"))
    older = config.load(None, ["export.vmware_hardware_version=11"])
    assert changes(export.export_inputs(config.load(), image), export.export_inputs(older, image)) == [
        "export.vmware_hardware_version changed: 13 → 11"]  # the OVA is remade


@pytest.mark.host
def test_rerun_with_nothing_changed_does_no_work_and_a_change_is_named(provisioned, workspace, monkeypatch, capsys):
    disk, rootfs = provisioned
    cfg = config.load(None, ["export.hypervisors=[kvm]"])

    def said(loaded: config.Config) -> str:
        capsys.readouterr()
        export.export(loaded, disk, render(loaded, workspace), rootfs, workspace, {})
        return next(line for line in messages(capsys.readouterr().err) if line.startswith("export: "))

    assert said(cfg) == "export: building (no earlier build)"
    real = export._make_artifact
    monkeypatch.setattr(export, "_make_artifact", lambda *a: pytest.fail("export ran again"))
    assert said(cfg) == f"export: up to date ({workspace.artifacts})"
    monkeypatch.setattr(export, "_make_artifact", real)
    assert said(config.load(None, ["export.hypervisors=[kvm, ovm]"])) == (
        "export: rebuilding (export.hypervisors changed: +ovm)")
    (workspace.artifacts / export.artifact_name(cfg, "ovm")).unlink()
    assert said(config.load(None, ["export.hypervisors=[kvm, ovm]"])) == (
        f"export: rebuilding ({export.artifact_name(cfg, 'ovm')} missing)")


@pytest.mark.host
def test_interrupted_export_leaves_nothing_that_looks_finished(provisioned, workspace, monkeypatch):
    disk, rootfs = provisioned
    cfg = config.load(None, ["export.hypervisors=[kvm, xen]"])
    export.export(cfg, disk, render(cfg, workspace), rootfs, workspace, {})  # an earlier complete set
    real = export._make_artifact

    def interrupted(config_, hypervisor, *rest):
        if hypervisor == "xen":
            raise KeyboardInterrupt
        return real(config_, hypervisor, *rest)

    monkeypatch.setattr(export, "_make_artifact", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export(cfg, disk, render(cfg, workspace), rootfs, workspace, {}, force=True)
    assert list(workspace.artifacts.iterdir()) == []


def test_missing_host_tool_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SysvmError) as caught:
        tools.require(["rootfs", "export"], config.load())
    message = str(caught.value)
    assert "missing host tools: lbzip2, mmdebstrap, qemu-img, tar" in message
    assert "apt-get install lbzip2 mmdebstrap qemu-utils tar" in message


def test_an_arm64_build_asks_for_its_emulator_firmware_and_efi_tools(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(tools, "host_architecture", lambda: "amd64")
    arm64 = config.load(None, ["debian.architecture=arm64"])
    missing = tools.architecture_tools(["rootfs", "disk", "packer"], arm64.arch, foreign=True)
    assert missing == {"qemu-system-aarch64", "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd", "arch-test",
                       "mkfs.fat", "mmd", "mcopy"}
    assert tools.architecture_tools(["rootfs", "disk", "packer"], config.load().arch, foreign=False) == {
        "qemu-system-x86_64"}
    with pytest.raises(SysvmError) as caught:
        tools.require(["disk", "packer"], arm64)
    assert "qemu-system-arm" in str(caught.value) and "mtools" in str(caught.value)


def test_build_stops_before_any_work_when_a_tool_is_missing(monkeypatch, tmp_path):
    from sysvm.build import build
    from sysvm.workspace import Workspace

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SysvmError, match="missing host tools"):
        build(config.load(), Workspace(tmp_path / "output"))
    assert not (tmp_path / "output").exists()


def test_host_mirror_detection(tmp_path):
    from sysvm.rootfs import apt_sources

    sources = tmp_path / "debian.sources"
    sources.write_text("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\n"
                       "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n")
    lines = apt_sources(config.load(), (sources,))
    assert lines == ["deb http://mirror.example/debian bookworm main",
                     "deb http://mirror.example/debian bookworm-updates main",
                     "deb http://mirror.example/debian-security bookworm-security main"]
    buster = apt_sources(config.load(None, ["debian.release=buster"]), (sources,))
    assert buster[0].startswith("deb http://archive.debian.org/debian buster")
    assert "buster/updates" in buster[-1]
    with pytest.raises(SysvmError, match="debian.mirror: 'auto' found no Debian mirror"):
        apt_sources(config.load(), (tmp_path / "none",))
