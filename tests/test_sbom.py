"""The SBOM: packages, sources and licenses read from a rootfs tarball, the rendered tree's files, the
artifacts that contain them; checked by spdx-tools, a validator sysvm did not write."""

from __future__ import annotations

import hashlib
import json
import tarfile

import pytest
from license_expression import get_spdx_licensing
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from sysvm import config, sbom
from sysvm.errors import SysvmError
from sysvm.render import RenderedTree
from tests.rootfs_tar import INSTALLED, write_rootfs_tar

ARTIFACTS = {"systemvmtemplate-4.20.0-x86_64-kvm.qcow2.bz2": {"hypervisor": "kvm", "md5": "a" * 32,
                                                              "sha512": "b" * 128},
             "systemvmtemplate-4.20.0-x86_64-vmware.ova": {"hypervisor": "vmware", "md5": "c" * 32,
                                                           "sha512": "d" * 128}}


def rendered_tree(tmp_path) -> RenderedTree:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "sysvm-role").write_text("router\n")
    entries = [{"path": "/etc", "type": "folder", "mode": "0755", "uid": 0, "gid": 0},
               {"path": "/etc/sysvm-role", "type": "file", "mode": "0600", "uid": 0, "gid": 0,
                "sha256": hashlib.sha256(b"router\n").hexdigest()}]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"files": entries}))
    return RenderedTree("render-key", tree, manifest)


def test_packages_sources_and_licenses_come_from_dpkg_and_the_copyright_files(tmp_path):
    tarball, _ = write_rootfs_tar(tmp_path)
    found = sbom.inventory(tarball)
    by_name = {package.name: package for package in found.packages}
    assert sorted(by_name) == sorted(name for name, _ in INSTALLED)  # not the one removed, config files left
    ssh = by_name["openssh-server"]
    assert (ssh.version, ssh.source, ssh.source_version) == ("1:9.2p1-2+b1", "openssh", "1:9.2p1-2")
    assert ssh.purl("bookworm") == "pkg:deb/debian/openssh-server@1%3A9.2p1-2%2Bb1?arch=amd64&distro=debian-bookworm"
    # The comma binds loosest; Autoconf's exception is the one for the GPL's version.
    assert ssh.license == ("BSD-2-Clause AND ((GPL-2.0-or-later OR Artistic-1.0-Perl) AND "
                           "LicenseRef-openssh-server-Sshd-Custom) AND GPL-3.0-or-later WITH Autoconf-exception-3.0")
    assert found.license_texts == {"LicenseRef-openssh-server-Sshd-Custom":
                                   "Permission is granted to use this file as you like.\n.\nNo warranty."}
    # Binary and source share a version unless Source names another; a free-text copyright file says nothing.
    assert (by_name["libstdc++6"].source, by_name["libstdc++6"].source_version) == ("gcc-12", "12.2.0-14")
    assert by_name["libstdc++6"].license == by_name["gcc-12-base"].license == "NOASSERTION"
    assert by_name["libstdc++6"].spdx_id == "SPDXRef-deb-libstdc.2B.2B6-amd64"


def test_the_document_validates_and_each_artifact_contains_every_package_and_the_layers(tmp_path):
    tarball, packages = write_rootfs_tar(tmp_path)
    path = tmp_path / sbom.FILE_NAME
    tree = rendered_tree(tmp_path)
    count = sbom.write(path, config.load(), tarball, tree, ARTIFACTS, 1700000000, "1.2.3")
    assert count == len(packages.read_text().splitlines())
    assert validate_full_spdx_document(parse_file(str(path))) == []
    document = json.loads(path.read_text())
    assert document["creationInfo"] == {"created": "2023-11-14T22:13:20Z", "creators": ["Tool: sysvm-1.2.3"]}
    ids = {package["name"]: package["SPDXID"] for package in document["packages"]}
    contains = {(r["spdxElementId"], r["relatedSpdxElement"]) for r in document["relationships"]
                if r["relationshipType"] == "CONTAINS"}
    described = {r["relatedSpdxElement"] for r in document["relationships"] if r["relationshipType"] == "DESCRIBES"}
    assert described == {ids[name] for name in ARTIFACTS}
    for artifact in ARTIFACTS:
        assert {(ids[artifact], ids[name]) for name, _ in INSTALLED} | {(ids[artifact], "SPDXRef-sysvm-layers")} \
            <= contains
    kvm = next(p for p in document["packages"] if p["name"].endswith("kvm.qcow2.bz2"))
    assert kvm["checksums"] == [{"algorithm": "MD5", "checksumValue": "a" * 32},
                                {"algorithm": "SHA512", "checksumValue": "b" * 128}]
    [layer_file] = document["files"]
    sha1 = hashlib.sha1(b"router\n").hexdigest()
    assert layer_file["fileName"] == "./etc/sysvm-role" and layer_file["checksums"][0]["checksumValue"] == sha1
    layers = next(p for p in document["packages"] if p["SPDXID"] == "SPDXRef-sysvm-layers")
    assert layers["packageVerificationCode"]["packageVerificationCodeValue"] == hashlib.sha1(sha1.encode()).hexdigest()
    # The same inputs give the same document: nothing in it comes from the clock or chance.
    again = tmp_path / "again.json"
    sbom.write(again, config.load(), tarball, tree, ARTIFACTS, 1700000000, "1.2.3")
    assert again.read_bytes() == path.read_bytes()


def test_every_spdx_id_sysvm_maps_to_is_on_spdx_s_list():
    licensing = get_spdx_licensing()
    for spdx_id in sbom.SPDX_IDS.values():
        assert licensing.validate(spdx_id).errors == [], spdx_id
    for exception in [*sbom.EXCEPTIONS.values(), *sbom.AUTOCONF.values()]:
        assert licensing.validate(f"GPL-2.0-or-later WITH {exception}").errors == [], exception
    for debian, spdx in (("GPL-2", "GPL-2.0-only"), ("LGPL-2.1+", "LGPL-2.1-or-later"), ("GPL-3.0+", "GPL-3.0-or-later"),
                         ("AGPL-3", "AGPL-3.0-only"), ("GFDL-1.3+", "GFDL-1.3-or-later"), ("expat", "MIT")):
        assert sbom.spdx_term(debian) == spdx
        assert licensing.validate(spdx).errors == []
    assert sbom.spdx_term("GPL") is None and sbom.spdx_term("GFDL-2") is None  # no version, no such version


def test_links_in_the_image_that_loop_or_leave_the_doc_tree_give_no_license(tmp_path):
    tarball = tmp_path / "rootfs.tar"
    status = "Package: a\nStatus: install ok installed\nVersion: 1\nArchitecture: all\n\n" \
             "Package: b\nStatus: install ok installed\nVersion: 1\nArchitecture: all\n"
    with tarfile.open(tarball, "w") as archive:
        for name, data, link in (("var/lib/dpkg/status", status.encode(), ""),
                                 ("usr/share/doc/a", None, "b"), ("usr/share/doc/b", None, "a"),
                                 ("etc/passwd", b"Format: copyright-format\n\nFiles: *\nLicense: MIT\n", ""),
                                 ("usr/share/doc/c", None, "/etc")):
            member = tarfile.TarInfo(f"./{name}")
            if link:
                member.type, member.linkname = tarfile.SYMTYPE, link
                archive.addfile(member)
            else:
                member.size = len(data)
                archive.addfile(member, __import__("io").BytesIO(data))
    found = sbom.inventory(tarball)
    assert [(package.name, package.license) for package in found.packages] == [("a", "NOASSERTION"),
                                                                               ("b", "NOASSERTION")]


def test_a_tarball_without_dpkg_s_database_is_a_one_line_error(tmp_path):
    tarball = tmp_path / "rootfs.tar"
    with tarfile.open(tarball, "w"):
        pass
    with pytest.raises(SysvmError, match=r"^sbom: .*rootfs.tar has no /var/lib/dpkg/status: it is not a Debian"):
        sbom.inventory(tarball)
    tarball.write_bytes(b"not a tar")
    with pytest.raises(SysvmError, match=r"^sbom: cannot read .*rootfs.tar"):
        sbom.inventory(tarball)
