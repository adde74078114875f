"""Export stage on a small real image: names, formats, OVA layout, checksums, report, caching, interruption."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
import xml.etree.ElementTree as ElementTree

import pytest

from sysvm import config, export, tools
from sysvm.errors import SysvmError
from sysvm.imageinfo import virtual_size
from sysvm.overlay import FinalImage
from sysvm.ovf import OVF_NS, VirtualMachine, descriptor
from sysvm.render import render
from sysvm.rootfs import Rootfs
from tests.disks import empty_qcow2

MIB = 2**20


@pytest.fixture
def provisioned(tmp_path) -> tuple[FinalImage, Rootfs]:
    image = empty_qcow2(tmp_path / "systemvm.qcow2", "48M")
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 2M", str(image)], check=True, capture_output=True)
    packages = tmp_path / "packages.txt"
    packages.write_text("openssh-server\t1:9.2p1-2\tamd64\n")
    return FinalImage("k" * 16, image), Rootfs("r" * 16, tmp_path / "rootfs.tar", packages)


def test_names_follow_the_pattern():
    default = config.load()
    assert export.artifact_name(default, "kvm") == "systemvmtemplate-4.20.0-kvm.qcow2.bz2"
    assert export.artifact_name(default, "vmware") == "systemvmtemplate-4.20.0-vmware.ova"
    with_arch = config.load(None, ["export.name_pattern=systemvmtemplate-{version}-{arch}-{hypervisor}"])
    assert export.artifact_name(with_arch, "xen") == "systemvmtemplate-4.20.0-x86_64-xen.vhd.bz2"
    assert export.artifact_name(with_arch, "hyperv") == "systemvmtemplate-4.20.0-x86_64-hyperv.vhd.zip"


def test_export_makes_every_artifact_with_checksums_and_report(provisioned, workspace, tmp_path):
    disk, rootfs = provisioned
    cfg = config.load()
    result = export.export(cfg, disk, render(cfg, workspace), rootfs, workspace, {"rootfs": 1.0})
    folder = workspace.artifacts
    names = {h: export.artifact_name(cfg, h) for h in cfg.export.hypervisors}
    assert {p.name for p in folder.iterdir()} == {*names.values(), "md5sum.txt", "sha512sum.txt",
                                                  "packages.txt", "build-report.json"}
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
    assert virtual_size(unpacked / "xen.vhd", "vhd") == 48 * MIB  # force_size: no CHS rounding
    assert subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "vpc", str(disk.image),
                           str(unpacked / "xen.vhd")], capture_output=True).returncode == 0
    report = json.loads(result.report.read_text())
    assert report["export_key"] == export.export_key(cfg, disk)
    assert report["virtual_size"] == 48 * MIB and report["durations_s"]["rootfs"] == 1.0
    assert set(report["artifacts"]) == set(names.values())
    assert report["tools"]["qemu-img"].startswith("qemu-img version")


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
    assert envelope.find(".//vssd:VirtualSystemType", ns).text == "vmx-11"
    assert envelope.find(".//ovf:OperatingSystemSection", ns).get(f"{{{OVF_NS}}}id") == "101"
    subtypes = {item.find("rasd:ResourceType", ns).text: (item.find("rasd:ResourceSubType", ns).text
                                                          if item.find("rasd:ResourceSubType", ns) is not None else None)
                for item in envelope.iter(f"{{{OVF_NS}}}Item")}
    assert subtypes["6"] == "lsilogic" and "5" in subtypes and "15" in subtypes and "17" in subtypes
    manifest = dict(line.split("= ") for line in contents[mf_name].decode().splitlines())
    assert manifest[f"SHA256({ovf_name})"] == hashlib.sha256(contents[ovf_name]).hexdigest()
    assert manifest[f"SHA256({vmdk_name})"] == hashlib.sha256(contents[vmdk_name]).hexdigest()
    assert contents[vmdk_name][:4] == b"KDMV"


def test_descriptor_escapes_names():
    text = descriptor(VirtualMachine("a&b", "a&b.vmdk", 10, MIB))
    ElementTree.fromstring(text)


def test_rerun_with_nothing_changed_does_no_work(provisioned, workspace, monkeypatch):
    disk, rootfs = provisioned
    cfg = config.load(None, ["export.hypervisors=[kvm]"])
    export.export(cfg, disk, render(cfg, workspace), rootfs, workspace, {})
    monkeypatch.setattr(export, "_make_artifact", lambda *a: pytest.fail("export ran again"))
    export.export(cfg, disk, render(cfg, workspace), rootfs, workspace, {})


def test_interrupted_export_leaves_nothing_that_looks_finished(provisioned, workspace, monkeypatch):
    disk, rootfs = provisioned
    cfg = config.load(None, ["export.hypervisors=[kvm, xen]"])
    export.export(cfg, disk, render(cfg, workspace), rootfs, workspace, {})  # an earlier complete set
    real = export._make_artifact

    def interrupted(config_, hypervisor, image, staging, threads):
        if hypervisor == "xen":
            raise KeyboardInterrupt
        return real(config_, hypervisor, image, staging, threads)

    monkeypatch.setattr(export, "_make_artifact", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export(cfg, disk, render(cfg, workspace), rootfs, workspace, {}, force=True)
    assert list(workspace.artifacts.iterdir()) == []


def test_stage_keys_change_with_inputs():
    from sysvm.render import render_key
    from sysvm.rootfs import rootfs_key

    base = config.load()
    assert render_key(base) == render_key(config.load())
    assert render_key(base) != render_key(config.load(None, ["consoleproxy.websocket_port=8081"]))
    assert rootfs_key(base) == rootfs_key(config.load(None, ["consoleproxy.websocket_port=8081"]))
    assert rootfs_key(base) != rootfs_key(config.load(None, ["debian.release=bullseye"]))
    assert rootfs_key(base) != rootfs_key(config.load(None, ["packages.roles.consoleproxy=[tcpdump, mtr-tiny]"]))


def test_missing_host_tool_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SysvmError) as caught:
        tools.require(["rootfs", "export"])
    message = str(caught.value)
    assert "missing host tools: lbzip2, mmdebstrap, qemu-img, tar" in message
    assert "apt-get install lbzip2 mmdebstrap qemu-utils tar" in message


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
