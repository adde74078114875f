"""A Shared FileSystem VM or a Kubernetes node doing its work (run by `invoke verify` through testinfra).

Both are User VMs to the host, deployed from the system VM template by a CloudStack 4.20+ management
server with its own cloud-init user data on a ConfigDrive; the suite logs in as the user that user data
(or the VM's SSH key pair) gives the key to, and runs as root through sudo. What is checked is the effect:
an NFS export a client outside the VM writes to, a container image imported into containerd.
"""

from __future__ import annotations

import re
import tempfile
import time
import tomllib
from pathlib import Path

import pytest
import testinfra

from sysvm.qemu import monitor_command

LEGACY_TOOLS = ("iptables", "ip6tables", "arptables", "ebtables")
# What kubeadm's preflight looks for on a node, beside the container runtime (and crictl, from the ISO).
KUBEADM_PREFLIGHT_TOOLS = ("conntrack", "ip", "iptables", "mount", "nsenter", "ebtables", "ethtool", "socat", "tc",
                           "touch")
# On sysvm's test ISO kubeadm, kubelet, kubectl and crictl are stand-ins, and no control node answers on the
# join address: the worker's join service (deploy-kube-system) fails, and so does cloud-init's last command,
# which starts it (on cloud-init 24.3+, cloud-init-main.service runs every stage and fails with its last).
# They need the real CKS ISO and a cluster; everything before them is checked here.
NEEDS_A_CLUSTER = {"deploy-kube-system.service", "cloud-final.service", "cloud-init-main.service"}


@pytest.fixture(scope="module")
def provisioned(booted):
    """The host once cloud-init has run the user data to its end (it starts after the boot's own units)."""
    deadline = time.monotonic() + 900
    while not booted.file("/run/cloud-init/result.json").exists:
        assert time.monotonic() < deadline, "cloud-init did not finish the user data within 900 s"
        time.sleep(5)
    return booted


def _role(expect, *roles: str) -> None:
    if expect["role"] not in roles:
        pytest.skip(f"a {' or '.join(roles)} check")


def test_sshd_listens_on_22_of_every_address_and_not_on_3922(provisioned):
    listening = [line.split()[3] for line in provisioned.run("ss -Htln").stdout.splitlines() if line.strip()]
    assert "0.0.0.0:22" in listening, listening
    assert not [address for address in listening if address.endswith(":3922")], listening


def test_root_has_no_key_and_the_user_data_s_user_has_the_vm_s(provisioned, expect):
    root_keys = provisioned.file("/root/.ssh/authorized_keys")
    # cloud-init's disable_root leaves the VM's key for root only behind a command that refuses the login
    for line in (root_keys.content_string.splitlines() if root_keys.exists else []):
        assert line.startswith("no-port-forwarding,") and 'command="echo \'Please login as' in line, line
    user = {"sharedfsvm": "debian", "cksnode": "cloud"}[expect["role"]]
    home = provisioned.user(user).home
    assert expect["management_key"] in provisioned.file(f"{home}/.ssh/authorized_keys").content_string


def test_cloud_init_read_the_config_drive(provisioned):
    source = provisioned.file("/var/lib/cloud/instance/datasource").content_string
    assert "DataSourceConfigDrive" in source, source
    datasources = provisioned.file("/etc/cloud/cloud.cfg.d/cloudstack.cfg").content_string
    assert re.search(r"^datasource_list: \['ConfigDrive', 'CloudStack'\]$", datasources, re.M), datasources
    assert provisioned.file("/etc/cloud/ds-identify.cfg").content_string.strip() == "policy: enabled"


def test_set_up_as_cloudstack_s_setup_does(provisioned, expect):
    for tool in LEGACY_TOOLS:
        query = provisioned.run(f"update-alternatives --query {tool}").stdout
        assert f"Value: /usr/sbin/{tool}-legacy" in query, (tool, query)
    assert provisioned.file("/proc/swaps").content_string.strip().count("\n") == 0  # the header alone
    assert provisioned.run("sysctl -n net.ipv4.conf.all.rp_filter").stdout.strip() == "0"
    forwarding = "1" if expect["role"] == "cksnode" else "0"
    assert provisioned.run("sysctl -n net.ipv4.ip_forward").stdout.strip() == forwarding
    hosts = provisioned.file("/etc/hosts").content_string
    assert re.search(rf"^{re.escape(expect['values']['eth0ip'])}\s+{expect['values']['name']}$", hosts, re.M), hosts
    assert provisioned.run("hostname").stdout.strip() == expect["values"]["name"]


def test_the_role_was_set_up_by_cloudstack_s_scripts_when_the_image_has_them(provisioned, expect):
    log = provisioned.file("/var/log/cloud.log").content_string
    if expect["image_has_cloudstack_scripts"]:
        assert "handing over to the image's CloudStack scripts" in log, log[-2000:]
        assert {"sharedfsvm": "Setting up sharedfsvm", "cksnode": "Setting up k8s node"}[expect["role"]] in log
    else:
        assert f"the image's own {expect['role']} setup stands" in log, log[-2000:]


def test_only_the_role_s_runtime_runs(provisioned, expect):
    services = {"sharedfsvm": "nfs-server", "cksnode": "containerd"}
    for role, service in services.items():
        active = provisioned.service(service).is_running
        assert active == (role == expect["role"]), (service, active)


def test_no_unit_failed_but_those_that_need_a_cluster(provisioned, expect):
    listing = provisioned.run("systemctl list-units --state=failed --no-legend --plain").stdout.splitlines()
    failed = {line.split()[0] for line in listing if line.strip()}
    allowed = NEEDS_A_CLUSTER if expect["role"] == "cksnode" else set()
    journals = {unit: provisioned.run(f"journalctl -b -u {unit} --no-pager -n 20").stdout for unit in failed - allowed}
    assert failed <= allowed, journals


# ------------------------------------------------------------------------------- Shared FileSystem VM


def test_the_data_disk_is_formatted_mounted_and_exported(provisioned, expect):
    _role(expect, "sharedfsvm")
    mount = provisioned.run("findmnt -n -o SOURCE,FSTYPE /export").stdout.split()
    assert mount == ["/dev/vdb", expect["filesystem"]], mount
    assert re.search(rf"^UUID=\S+ /export {expect['filesystem']} defaults 0 2$",
                     provisioned.file("/etc/fstab").content_string, re.M)
    exports = provisioned.run("exportfs -v").stdout
    assert re.search(r"^/export\s+<world>\(.*\brw\b.*\bno_root_squash\b", exports, re.M), exports
    shown = provisioned.run("showmount -e localhost")
    assert shown.rc == 0 and re.search(r"^/export\s+\*$", shown.stdout, re.M), shown.stdout + shown.stderr
    log = provisioned.file("/var/log/userdata.log").content_string
    assert "NFS share created successfully." in log, log
    assert provisioned.file("/home/cloud/success").content_string.strip() == "true"
    assert provisioned.file("/etc/udev/rules.d/99-resize-filesystem.rules").contains("resize-sharedfs@")
    assert provisioned.service("nfs-server").is_enabled


def test_a_client_outside_the_vm_writes_and_reads_a_file_over_nfs(provisioned, expect):
    """From a network namespace on the host (libnfs's client, NFSv4 over TCP, the VM's port 2049
    forwarded to the namespace's side of a veth pair): a file written there appears on the VM's disk, and
    one written on the VM is read back there."""
    _role(expect, "sharedfsvm")
    client = expect["nfs_client"]
    local = testinfra.get_host("local://")
    share = f"nfs://{client['server']}/export"
    in_namespace = f"ip netns exec {client['namespace']}"
    payload = f"written from {client['namespace']} at {time.time()}\n"
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "from-client.txt"
        source.write_text(payload)
        copied = local.run(f"{in_namespace} nfs-cp {source} '{share}/from-client.txt?version=4'")
        assert copied.rc == 0, copied.stdout + copied.stderr
    written = provisioned.file("/export/from-client.txt")
    assert written.exists and written.content_string == payload
    provisioned.run("sh -c 'echo written on the VM > /export/from-vm.txt'")
    read = local.run(f"{in_namespace} nfs-cat '{share}/from-vm.txt?version=4'")
    assert read.rc == 0 and read.stdout == "written on the VM\n", read.stdout + read.stderr


def test_the_file_system_grows_when_its_data_disk_grows(provisioned, expect):
    """The disk grows under the running VM as a KVM host grows a volume (libvirt's blockresize is QEMU's
    block_resize); the kernel's change event meets the user data's udev rule, whose resize-sharedfs@
    unit grows the file system (xfs_growfs or resize2fs) while it stays exported."""
    _role(expect, "sharedfsvm")
    grown_mib = 2 * expect["data_disk_mib"]
    monitor_command(Path(expect["monitor_socket"]), "block_resize",
                    {"device": expect["data_drive"], "size": grown_mib * 2**20})

    def size_mib() -> int:
        return int(provisioned.run("df -B1M --output=size /export").stdout.split()[-1])

    deadline = time.monotonic() + 300  # a oneshot unit started by udev, under emulation
    while size_mib() < 0.9 * grown_mib:
        assert time.monotonic() < deadline, f"/export is {size_mib()} MiB, not about {grown_mib}, after 300 s"
        time.sleep(5)
    journal = provisioned.run("journalctl -b -u resize-sharedfs@vdb.service --no-pager").stdout
    assert "Finished running resize script." in provisioned.file("/var/log/userdata.log").content_string, journal
    assert re.search(r"^/export\s+\*$", provisioned.run("showmount -e localhost").stdout, re.M)


# -------------------------------------------------------------------------------------- Kubernetes node


def test_containerd_runs_with_the_systemd_cgroup_driver_on_cgroup_v2(provisioned, expect):
    """The runc runtime's options in the configuration containerd read at its last start set the systemd
    cgroup driver. containerd 1.4 (bullseye) keeps those options unparsed and `containerd config dump`
    shows their table empty; later versions show the setting, which must then say true too."""
    _role(expect, "cksnode")
    assert provisioned.service("containerd").is_enabled and provisioned.service("containerd").is_running
    assert provisioned.run("stat -fc %T /sys/fs/cgroup").stdout.strip() == "cgroup2fs"
    configuration = tomllib.loads(provisioned.file("/etc/containerd/config.toml").content_string)
    runc = configuration["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"]
    assert runc.get("options", {}).get("SystemdCgroup") is True, runc
    # containerd started after the file was last written (both on the VM's clocks; 2 s for rounding)
    started_s = int(provisioned.run("systemctl show -p ActiveEnterTimestampMonotonic --value containerd").stdout) / 1e6
    age_s = int(provisioned.run("sh -c 'echo $(( $(date +%s) - $(stat -c %Y /etc/containerd/config.toml) ))'").stdout)
    uptime_s = float(provisioned.file("/proc/uptime").content_string.split()[0])
    assert started_s >= uptime_s - age_s - 2, (started_s, uptime_s, age_s)
    effective = provisioned.run("containerd config dump").stdout
    assert "SystemdCgroup = false" not in effective, effective[-2000:]


def test_the_iso_s_image_is_imported_and_is_the_sandbox_image(provisioned, expect):
    _role(expect, "cksnode")
    images = provisioned.run("ctr -n k8s.io images ls -q").stdout.split()
    assert expect["pause_image"] in images, images
    effective = provisioned.run("containerd config dump").stdout
    assert f'sandbox_image = "{expect["pause_image"]}"' in effective
    assert provisioned.file("/etc/containerd/config.toml").contains(f'sandbox_image = "{expect["pause_image"]}"')


def test_what_the_iso_brings_is_installed_where_the_node_s_setup_puts_it(provisioned, expect):
    """The CNI plugins (Debian's, on the test ISO) are real; kubeadm, kubelet, kubectl and crictl are the
    test ISO's stand-ins: running them, and the kubelet and `kubeadm join`, need the real CKS ISO."""
    _role(expect, "cksnode")
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        assert provisioned.file(f"/opt/cni/bin/{plugin}").mode & 0o111, plugin
    for binary in ("kubeadm", "kubelet", "kubectl", "crictl"):
        assert provisioned.file(f"/opt/bin/{binary}").is_file, binary
    assert provisioned.file("/etc/systemd/system/kubelet.service").contains("ExecStart=/opt/bin/kubelet")
    assert provisioned.file("/etc/default/kubelet").contains("--cgroup-driver=systemd")
    assert provisioned.service("kubelet").is_enabled
    assert not provisioned.mount_point("/mnt/k8sdisk").exists  # unmounted once installed, as the setup does


def test_kubeadm_s_preflight_prerequisites_are_met(provisioned, expect):
    _role(expect, "cksnode")
    modules = {line.split()[0] for line in provisioned.file("/proc/modules").content_string.splitlines()}
    assert {"overlay", "br_netfilter"} <= modules
    for key in ("net.bridge.bridge-nf-call-iptables", "net.ipv4.ip_forward"):
        assert provisioned.run(f"sysctl -n {key}").stdout.strip() == "1", key
    for module in ("ip_vs", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack"):  # what the join script loads
        assert provisioned.run(f"modprobe -n {module}").rc == 0, module
    missing = [tool for tool in KUBEADM_PREFLIGHT_TOOLS if provisioned.run(f"command -v {tool}").rc != 0]
    assert missing == []
