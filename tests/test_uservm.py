"""The User VM roles' inputs as a management server makes them: user data, ConfigDrive, the test CKS ISO."""

from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from sysvm.cloudstack import locate
from sysvm.uservm import (
    CONFIG_DRIVE_LABEL,
    TEST_PAUSE_IMAGE,
    cks_node_user_data,
    cks_test_iso,
    config_drive,
    fsvm_user_data,
    oci_archive,
)
from tests.tiers import host_tool, unavailable

CLOUDSTACK = Path(__file__).resolve().parents[2] / "shared" / "cloudstack"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHc2aW1ldGVzdGtleWZvcm1hbmFnZW1lbnQ mgmt@cloudstack"


@pytest.fixture(scope="module")
def tree():
    if not CLOUDSTACK.is_dir():
        unavailable(f"no CloudStack source tree at {CLOUDSTACK}")
    return locate(str(CLOUDSTACK))


@pytest.mark.parametrize("filesystem", ["xfs", "ext4"])
def test_the_shared_filesystem_vm_s_user_data_is_filled_in_as_the_management_server_does(tree, filesystem):
    text = fsvm_user_data(tree, filesystem).decode()
    assert "{{" not in text and text.startswith("#cloud-config")
    assert f"FILESYSTEM={filesystem}\n" in text and "EXPORT_DIR=/export\n" in text and "HYPERVISOR=kvm\n" in text


def test_the_kubernetes_node_s_user_data_carries_the_key_and_the_join_address(tree):
    text = cks_node_user_data(tree, KEY, "10.1.1.15").decode()
    # only the private registry's placeholders stay: a cluster without one leaves them, as upstream
    assert set(re.findall(r"\{\{\s*([\w.]+)\s*\}\}", text)) <= {"registry.url", "registry.url.endpoint",
                                                                 "registry.username", "registry.password",
                                                                 "registry.token"}
    assert f'- "{KEY}"' in text and "kubeadm join 10.1.1.15:6443" in text
    assert "EJECT_ISO_FROM_OS=false" in text and 'ROUTER_IP=""' in text


def test_the_container_image_archive_is_an_oci_layout_that_names_its_image():
    archive = tarfile.open(fileobj=io.BytesIO(oci_archive(TEST_PAUSE_IMAGE, "amd64")))
    files = {member.name: archive.extractfile(member).read() for member in archive.getmembers()}
    index = json.loads(files["index.json"])
    (manifest_entry,) = index["manifests"]
    assert manifest_entry["annotations"]["io.containerd.image.name"] == TEST_PAUSE_IMAGE
    manifest = json.loads(files[f"blobs/sha256/{manifest_entry['digest'].split(':')[1]}"])
    config = json.loads(files[f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}"])
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    layer_digest = manifest["layers"][0]["digest"]
    assert config["rootfs"]["diff_ids"] == [layer_digest] and f"blobs/sha256/{layer_digest[7:]}" in files
    assert oci_archive(TEST_PAUSE_IMAGE, "amd64") == oci_archive(TEST_PAUSE_IMAGE, "amd64")  # same bytes


def _iso_files(iso: Path) -> tuple[str, list[str]]:
    isoinfo = host_tool("isoinfo", "genisoimage")
    label = subprocess.run([isoinfo, "-d", "-i", iso], check=True, capture_output=True, text=True).stdout
    listing = subprocess.run([isoinfo, "-f", "-R", "-i", iso], check=True, capture_output=True, text=True).stdout
    return re.search(r"^Volume id: (.*)$", label, re.M).group(1), listing.split()


def _iso_read(iso: Path, path: str) -> bytes:
    return subprocess.run([host_tool("isoinfo", "genisoimage"), "-R", "-x", path, "-i", iso], check=True,
                          capture_output=True).stdout


@pytest.mark.host
def test_the_config_drive_has_cloudstack_s_layout_and_label(tmp_path):
    host_tool("genisoimage", "genisoimage")
    iso = config_drive(tmp_path / "cd.iso", b"#cloud-config\n", {"vm-id": "uuid-1", "local-hostname": "vm-1",
                                                                   "public-keys": KEY})
    label, files = _iso_files(iso)
    assert label == CONFIG_DRIVE_LABEL
    assert {"/cloudstack/userdata/user_data.txt", "/cloudstack/metadata/vm-id.txt", "/openstack/latest/user_data",
            "/openstack/latest/meta_data.json", "/openstack/latest/vendor_data.json",
            "/openstack/latest/network_data.json"} <= set(files)
    meta = json.loads(_iso_read(iso, "/openstack/latest/meta_data.json"))
    assert meta["uuid"] == "uuid-1" and meta["hostname"] == "vm-1" and meta["public_keys"] == {"mgmt@cloudstack": KEY}
    assert _iso_read(iso, "/openstack/latest/user_data") == b"#cloud-config\n"
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.host
def test_the_test_cks_iso_is_laid_out_as_the_real_one(tmp_path):
    host_tool("genisoimage", "genisoimage")
    iso = cks_test_iso(tmp_path / "cks.iso", "amd64")
    label, files = _iso_files(iso)
    assert label == "CDROM"  # genisoimage's default, as create-kubernetes-binaries-iso.sh leaves it
    assert {"/cni/cni-plugins-amd64.tgz", "/cri-tools/crictl-linux-amd64.tar.gz", "/k8s/kubeadm", "/k8s/kubelet",
            "/k8s/kubectl", "/kubelet.service", "/10-kubeadm.conf", "/docker/pause.tar"} <= set(files)
    with tarfile.open(fileobj=io.BytesIO(_iso_read(iso, "/cni/cni-plugins-amd64.tgz"))) as plugins:
        assert {"bridge", "host-local", "loopback"} <= set(plugins.getnames())
