"""The two User VM roles as a CloudStack 4.20+ management server starts them from the system VM template.

A Shared FileSystem VM (`sharedfsvm`) and a CloudStack Kubernetes Service node (`cksnode`) are User VMs to
the host: it hands over the command line (UserVmManagerImpl.addUserVMCmdlineArgs) and copies no scripts.
Their work comes as cloud-init user data on a ConfigDrive: CloudStack's own `fsvm-init.yml` and
`k8s-node.yml`, with their `{{ ... }}` placeholders replaced as the management server replaces them
(StorageVmSharedFSLifeCycle, KubernetesClusterActionWorker). A Shared FileSystem VM has a data disk; a
Kubernetes node has the CKS ISO, which here is a test ISO laid out as CloudStack's
create-kubernetes-binaries-iso.sh lays it out, holding what can be made on this host (see `cks_test_iso`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sysvm.cloudstack import CloudStackTree
from sysvm.errors import SysvmError
from sysvm.process import run

USER_VM_ROLES = ("sharedfsvm", "cksnode")
CONFIG_DRIVE_LABEL = "config-2"  # VirtualMachineManager.VmConfigDriveLabel's default
FSVM_EXPORT = "/export"  # SharedFS.SharedFSPath
FSVM_USER_DATA = "plugins/storage/sharedfs/storagevm/src/main/resources/conf/fsvm-init.yml"
CKS_NODE_USER_DATA = "plugins/integrations/kubernetes-service/src/main/resources/conf/k8s-node.yml"
# The name the test ISO's container image is imported under: the node's setup makes the newest image
# whose name holds "pause" containerd's sandbox image.
TEST_PAUSE_IMAGE = "localhost/sysvm-test/pause:1"
CNI_PLUGINS = Path("/usr/lib/cni")  # Debian's containernetworking-plugins on this host
# Binaries only the real CKS ISO has (Debian packages none of them): stand-ins that say so and fail.
CKS_ONLY = {"k8s/kubeadm": "kubeadm", "k8s/kubelet": "kubelet", "k8s/kubectl": "kubectl"}
STAND_IN = ('#!/bin/sh\necho "$(basename "$0"): a stand-in on sysvm\'s test ISO; the real one comes with '
            'CloudStack\'s CKS ISO" >&2\nexit 1\n')
# Written for the test ISO in place of Kubernetes' own files of these names (the real ISO has those).
KUBELET_UNIT = ("[Unit]\nDescription=kubelet: The Kubernetes Node Agent\nWants=network-online.target\n"
                "After=network-online.target\n\n[Service]\nExecStart=/usr/bin/kubelet\nRestart=always\n"
                "RestartSec=10\n\n[Install]\nWantedBy=multi-user.target\n")
KUBEADM_DROP_IN = ("[Service]\nEnvironmentFile=-/etc/default/kubelet\nExecStart=\n"
                   "ExecStart=/usr/bin/kubelet $KUBELET_EXTRA_ARGS\n")


def _user_data_file(tree: CloudStackTree, relative: str) -> Path:
    path = tree.root / relative
    if not path.is_file():
        raise SysvmError(f"{tree.root}: no {relative} (the User VM roles need a whole CloudStack source tree)")
    return path


def fsvm_user_data(tree: CloudStackTree, filesystem: str, hypervisor: str = "kvm") -> bytes:
    """fsvm-init.yml as StorageVmSharedFSLifeCycle.getStorageVmConfig fills it in."""
    text = _user_data_file(tree, FSVM_USER_DATA).read_text(encoding="utf-8")
    for key, value in (("filesystem", filesystem), ("hypervisor", hypervisor), ("exportpath", FSVM_EXPORT)):
        text = text.replace(f"{{{{ fsvm.{key} }}}}", value)
    return text.encode()


def cks_node_user_data(tree: CloudStackTree, ssh_public_key: str, join_ip: str) -> bytes:
    """k8s-node.yml as KubernetesClusterActionWorker.getKubernetesNodeConfig fills it in for a worker node
    of a cluster without a private registry, the CKS ISO attached to the node (not mounted on the router)."""
    text = _user_data_file(tree, CKS_NODE_USER_DATA).read_text(encoding="utf-8")
    values = {"k8s.ssh.pub.key": f'- "{ssh_public_key}"', "k8s_control_node.join_ip": join_ip,
              "k8s_control_node.cluster.token": "abcdef.0123456789abcdef", "k8s.eject.iso": "false",
              "k8s.vr.iso.mounted.ip": "",
              # the defaults of cloud.kubernetes.worker.node.install.attempt.wait.duration and .reattempts
              "k8s.install.wait.time": "15", "k8s.install.reattempts.count": "100"}
    for key, value in values.items():
        text = text.replace(f"{{{{ {key} }}}}", value)
    return text.encode()


def _genisoimage(source: Path, iso: Path, options: list[str]) -> Path:
    partial = iso.with_name(f".{iso.name}.partial")
    run(["genisoimage", "-o", partial, *options, source])
    os.replace(partial, iso)
    return iso


def config_drive(iso: Path, user_data: bytes, metadata: dict[str, str]) -> Path:
    """The ConfigDrive ISO as ConfigDriveBuilder writes it: cloudstack/userdata/user_data.txt and
    cloudstack/metadata/<name>.txt, and the OpenStack layout cloud-init reads (openstack/latest/:
    user_data, meta_data.json with CloudStack's key mapping, vendor_data.json, network_data.json empty as
    for a network whose router serves DHCP), labelled config-2."""
    with tempfile.TemporaryDirectory(dir=iso.parent) as scratch:
        root = Path(scratch) / "drive"
        user_folder, meta_folder = root / "cloudstack/userdata", root / "cloudstack/metadata"
        openstack = root / "openstack/latest"
        for folder in (user_folder, meta_folder, openstack):
            folder.mkdir(parents=True)
        (user_folder / "user_data.txt").write_bytes(user_data)
        os.link(user_folder / "user_data.txt", openstack / "user_data")
        mapping = {"availability-zone": "availability_zone", "local-hostname": "hostname", "vm-id": "uuid",
                   "public-hostname": "name"}
        meta: dict[str, object] = {}
        for name, value in metadata.items():
            (meta_folder / f"{name}.txt").write_text(value)
            if name == "public-keys":
                key_name = value.split()[2] if len(value.split()) > 2 else "key"
                meta["keys"] = [{"type": "ssh", "data": value, "name": key_name}]
                meta["public_keys"] = {key_name: value}
            elif name in mapping:
                meta[mapping[name]] = value
        (openstack / "meta_data.json").write_text(json.dumps(meta))
        (openstack / "vendor_data.json").write_text("{}")
        (openstack / "network_data.json").write_text("{}")
        return _genisoimage(root, iso, ["-ldots", "-allow-lowercase", "-allow-multidot", "-cache-inodes", "-l",
                                        "-quiet", "-J", "-r", "-V", CONFIG_DRIVE_LABEL])


def _tar_bytes(files: dict[str, tuple[bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, (content, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), mode, 0
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def oci_archive(name: str, architecture: str) -> bytes:
    """A one-layer OCI image archive, as `ctr image export` writes one, that `ctr image import` names `name`."""
    blobs: dict[str, bytes] = {}

    def blob(content: bytes, media_type: str) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        blobs[digest] = content
        return {"mediaType": media_type, "digest": digest, "size": len(content)}

    layer = _tar_bytes({"README": (b"A container image of sysvm's test ISO: it is imported, not run.\n", 0o644)})
    layer_descriptor = blob(layer, "application/vnd.oci.image.layer.v1.tar")
    image_config = {"architecture": architecture, "os": "linux", "config": {"Entrypoint": ["/pause"]},
                    "rootfs": {"type": "layers", "diff_ids": [layer_descriptor["digest"]]}}
    config_descriptor = blob(json.dumps(image_config).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_descriptor, "layers": [layer_descriptor]}
    manifest_descriptor = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    manifest_descriptor["platform"] = {"architecture": architecture, "os": "linux"}
    manifest_descriptor["annotations"] = {"io.containerd.image.name": name,
                                          "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest_descriptor]}
    files = {"oci-layout": (b'{"imageLayoutVersion":"1.0.0"}', 0o644),
             "index.json": (json.dumps(index).encode(), 0o644)}
    for digest, content in blobs.items():
        files[f"blobs/sha256/{digest.split(':')[1]}"] = (content, 0o644)
    return _tar_bytes(files)


def cks_test_iso(iso: Path, architecture: str) -> Path:
    """An ISO laid out as the CKS ISO (label CDROM, genisoimage's default; cni/, cri-tools/, k8s/,
    kubelet.service, 10-kubeadm.conf, docker/*.tar) with what can honestly be made on this host: Debian's
    CNI plugins, a small container image archive, and stand-ins for crictl, kubeadm, kubelet and kubectl,
    which Debian does not package (they fail, saying they come with the real ISO)."""
    with tempfile.TemporaryDirectory(dir=iso.parent) as scratch:
        root = Path(scratch) / "iso"
        for folder in ("cni", "cri-tools", "k8s", "docker"):
            (root / folder).mkdir(parents=True)
        plugins = {path.name: (path.read_bytes(), 0o755) for path in sorted(CNI_PLUGINS.iterdir()) if path.is_file()}
        with tarfile.open(root / f"cni/cni-plugins-{architecture}.tgz", "w:gz") as tgz:
            for name, (content, mode) in plugins.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(content), mode
                tgz.addfile(info, io.BytesIO(content))
        with tarfile.open(root / f"cri-tools/crictl-linux-{architecture}.tar.gz", "w:gz") as tgz:
            info = tarfile.TarInfo("crictl")
            info.size, info.mode = len(STAND_IN), 0o755
            tgz.addfile(info, io.BytesIO(STAND_IN.encode()))
        for relative in CKS_ONLY:
            (root / relative).write_text(STAND_IN)
            (root / relative).chmod(0o755)
        (root / "kubelet.service").write_text(KUBELET_UNIT)
        (root / "10-kubeadm.conf").write_text(KUBEADM_DROP_IN)
        (root / "docker/pause.tar").write_bytes(oci_archive(TEST_PAUSE_IMAGE, architecture))
        return _genisoimage(root, iso, ["-J", "-R", "-l", "-quiet"])


@dataclass(frozen=True)
class NfsClient:
    """A network namespace on this host, joined to it by a veth pair: an NFS client outside the VM.
    `server` is the host side's address, where the VM's NFS port is forwarded."""

    namespace: str
    server: str


@contextlib.contextmanager
def nfs_client_namespace(name: str) -> Iterator[NfsClient]:
    """Make the namespace and the veth pair (10.254.N.1 here, .2 inside, N from this process's id so that
    two runs do not meet); remove both on every path."""
    pid = os.getpid()
    subnet = pid % 250 + 1
    namespace, outside, inside = f"sysvm-{pid}-{name}"[:30], f"svnfs{pid}"[:15], "eth0"
    host_address, client_address = f"10.254.{subnet}.1", f"10.254.{subnet}.2"
    run(["ip", "netns", "add", namespace])
    try:
        run(["ip", "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", namespace])
        run(["ip", "addr", "add", f"{host_address}/30", "dev", outside])
        run(["ip", "link", "set", outside, "up"])
        run(["ip", "netns", "exec", namespace, "ip", "addr", "add", f"{client_address}/30", "dev", inside])
        run(["ip", "netns", "exec", namespace, "ip", "link", "set", inside, "up"])
        run(["ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up"])
        yield NfsClient(namespace, host_address)
    finally:
        run(["ip", "link", "delete", outside], check=False, capture=True)
        run(["ip", "netns", "delete", namespace], check=False, capture=True)


def data_disk(path: Path, size_mib: int) -> Path:
    """The Shared FileSystem VM's data disk: empty, as a new volume of the disk offering is."""
    path.unlink(missing_ok=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", path, f"{size_mib}M"])
    return path

