"""Router health checks and their runner, fed the management server's data and read back as CloudStack reads it.

The checks and the runner run as processes, with files and commands replaced through HC_* variables.
The data comes from sysvm/suites/cloudstack_health.py (the management server's strings, CsMonitor's
document; the router suite of verify builds its data with it too); CloudStack's own parser, fetch script and file editor, imported or run from the CloudStack
tree beside this repository (../shared/cloudstack, or $SYSVM_CLOUDSTACK_SOURCE), prove it is their shape.
This module runs on the host and inside the Debian release chroots (tests/test_inimage_python.py), so it
keeps to what Python 3.9 and the oldest pytest there offer, and imports nothing from the builder but that
data module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sysvm.suites.cloudstack_health import (
    VM,
    LoadBalancer,
    Network,
    PortForward,
    data_document,
    dhcp_hosts_line,
    dnat_lines,
    haproxy_config,
    hosts_line,
    monitor_conf,
)
from tests.tiers import unavailable

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ROOT / "sysvm/overlays/router/root/health_checks"
RUNNER = ROOT / "sysvm/overlays/router/root/monitorServices.py"
CLOUDSTACK = Path(os.environ.get("SYSVM_CLOUDSTACK_SOURCE") or ROOT.parent / "shared" / "cloudstack")
BASIC = ["cpu_usage_check.py", "disk_space_check.py", "gateways_check.py", "memory_usage_check.py",
         "router_version_check.py"]
ADVANCED = ["dhcp_check.py", "dns_check.py", "haproxy_check.py", "iptables_check.py"]
SIGNATURE = "5d0b4c3e3c0e1f4b8c6f3a2e9d7a1b2c"
RELEASE = "Cloudstack Release 4.20.0 2025-01-01"

VM1 = VM("vm-1", "02:00:4c:5f:00:01", "10.1.1.5")
VM2 = VM("vm-2", "02:00:4c:5f:00:02", "10.1.1.6")
FORWARD = PortForward("192.168.1.30", (2222, 2222), "10.1.1.5", (22, 22))
RANGE = PortForward("192.168.1.30", (8000, 8010), "10.1.1.6", (9000, 9010))
BALANCER = LoadBalancer("192.168.1.30", 80, 8080, ["10.1.1.5", "10.1.1.6"])


def consistent_network() -> Network:
    return Network(vms=[VM1, VM2], gateways=["10.1.1.1", "192.168.1.1"], forwards=[FORWARD, RANGE],
                   balancers=[BALANCER], min_disk_mb=1, max_cpu=95, max_memory=95,
                   template_version=RELEASE, scripts_version=SIGNATURE)


class Router:
    """A router's files and commands as the checks see them, consistent with the data it was given."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.network = consistent_network()
        self.files = {
            "stat": "cpu  100 0 100 800 0 0 0 0 0 0\n",
            "stat.later": "cpu  110 0 110 980 0 0 0 0 0 0\n",  # 20 busy of 200 ticks: 10%
            "meminfo": "MemTotal: 1000000 kB\nMemFree: 500000 kB\nMemAvailable: 600000 kB\n",  # 40% in use
            "cloudstack-release": RELEASE + "\n",
            "cloud-scripts-signature": SIGNATURE + "\n",
            # vm-2's NIC on this network is not its default one: dnsmasq tags its line.
            "dhcphosts.txt": dhcp_hosts_line(VM1) + "\n" + dhcp_hosts_line(VM2, default_nic=False) + "\n",
            "hosts": "127.0.0.1\tlocalhost\n" + hosts_line(VM1) + "\n" + hosts_line(VM2) + "\n",
            "haproxy.cfg": haproxy_config([BALANCER]),
            "nat.rules": "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                         + "".join(line + "\n" for f in (FORWARD, RANGE) for line in dnat_lines(f)) + "COMMIT\n",
        }
        for name, text in self.files.items():
            (folder / name).write_text(text)
        self.set_data()
        self.env = {
            **os.environ,
            "HC_DATA": str(folder / "data.json"),
            "HC_PROC_STAT_PATH": str(folder / "stat"),
            "HC_PROC_STAT_LATER_PATH": str(folder / "stat.later"),
            "HC_MEMINFO_PATH": str(folder / "meminfo"),
            "HC_CPU_SAMPLE_S": "0",
            "HC_DISK_PATH": str(folder),
            "HC_RELEASE_FILE": str(folder / "cloudstack-release"),
            "HC_SIGNATURE_FILE": str(folder / "cloud-scripts-signature"),
            "HC_DHCP_HOSTS": str(folder / "dhcphosts.txt"),
            "HC_HOSTS": str(folder / "hosts"),
            "HC_HAPROXY_CFG": str(folder / "haproxy.cfg"),
            "HC_PING": "true",
            "HC_IPTABLES_SAVE": f"cat {folder / 'nat.rules'}",
        }

    def set_data(self, **document: object) -> None:
        (self.folder / "data.json").write_text(data_document(self.network, **document))

    def edit(self, name: str, old: str, new: str) -> None:
        path = self.folder / name
        text = path.read_text()
        assert old and old in text, f"{old!r} not in {name}"
        path.write_text(text.replace(old, new))

    def check(self, name: str) -> subprocess.CompletedProcess[str]:
        kind = "basic" if name in BASIC else "advanced"
        return subprocess.run([str(CHECKS / name), kind], capture_output=True, text=True, env=self.env, timeout=60)


@pytest.fixture
def router(tmp_path) -> Router:
    return Router(tmp_path)


def outcome(result: subprocess.CompletedProcess[str]) -> tuple[int, str]:
    assert result.stderr == "", result.stderr
    assert "Traceback" not in result.stdout
    return result.returncode, result.stdout.strip()


# ------------------------------------------------------------------ the data is CloudStack's, read as CloudStack reads it


def load_module(name: str, path: Path) -> object:
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def cloudstack() -> Path:
    if not (CLOUDSTACK / "systemvm/debian/root/health_checks").is_dir():
        unavailable(f"CloudStack's source tree is needed at {CLOUDSTACK} (or $SYSVM_CLOUDSTACK_SOURCE): the "
                    "health check tests prove their data and results against CloudStack's own code")
    return CLOUDSTACK


def cloudstack_parse(cloudstack: Path, data_file: Path, key: str | None = None) -> object:
    """CloudStack's getHealthChecksData, reading `data_file` where it reads /root/health_checks_data.json."""
    module = load_module("cloudstack_shared_functions",
                         cloudstack / "systemvm/debian/root/health_checks/utility/sharedFunctions.py")
    real_open = open

    def redirected(path: str, *args: object, **kwargs: object) -> object:
        assert path == "/root/health_checks_data.json"
        return real_open(data_file, *args, **kwargs)  # type: ignore[arg-type]

    module.open = redirected  # type: ignore[attr-defined]  # a module global comes before the builtin
    return module.getHealthChecksData(key)  # type: ignore[attr-defined]


def test_the_data_is_in_cloudstacks_shape_and_parsed_alike(router, cloudstack):
    ours = load_module("sysvm_health_utility", CHECKS / "utility.py")
    data_file = router.folder / "data.json"
    whole = cloudstack_parse(cloudstack, data_file)
    assert whole["health_checks_enabled"] is True and whole["excluded_health_checks"] == []
    keys = ["virtualMachines", "gateways", "portForwarding", "haproxyData", "systemThresholds", "routerVersion"]
    assert sorted(whole["health_checks_config"]) == sorted(keys)
    document = json.loads(data_file.read_text())
    for key in keys:
        theirs = cloudstack_parse(cloudstack, data_file, key)
        assert theirs, key
        assert ours.records(document, key) == theirs, key  # type: ignore[attr-defined]
    vms = cloudstack_parse(cloudstack, data_file, "virtualMachines")
    assert vms[1] == {"vmName": "vm-2", "macAddress": "02:00:4c:5f:00:02", "ip": "10.1.1.6", "dhcp": "true",
                      "dns": "true"}
    assert cloudstack_parse(cloudstack, data_file, "gateways") == [{"gatewaysIps": "10.1.1.1 192.168.1.1"}]
    assert cloudstack_parse(cloudstack, data_file, "systemThresholds") == [
        {"minDiskNeeded": "1.0", "maxCpuUsage": "95.0", "maxMemoryUsage": "95.0"}]


# --------------------------------------------------------------------------------------------- each check


@pytest.mark.parametrize("name", BASIC + ADVANCED)
def test_each_check_passes_on_consistent_data(name, router):
    code, message = outcome(router.check(name))
    assert code == 0, message
    assert message and "\n" not in message


@pytest.mark.parametrize("name", BASIC + ADVANCED)
def test_a_check_given_the_other_type_prints_nothing(name, router):
    other = "advanced" if name in BASIC else "basic"
    result = subprocess.run([str(CHECKS / name), other], capture_output=True, text=True, env=router.env, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_every_check_is_executable_and_the_helper_is_not():
    for name in BASIC + ADVANCED:
        assert os.access(str(CHECKS / name), os.X_OK), name
    assert not os.access(str(CHECKS / "utility.py"), os.X_OK)
    # __pycache__ is left by the checks run below, unless PYTHONDONTWRITEBYTECODE is set; render leaves it out.
    assert sorted(p.name for p in CHECKS.iterdir() if os.access(str(p), os.X_OK) and p.name != "__pycache__") == \
        sorted(BASIC + ADVANCED)


def test_dhcp_check_names_the_vm_missing_from_dhcphosts(router):
    assert outcome(router.check("dhcp_check.py")) == (0, f"all 2 VMs are in {router.env['HC_DHCP_HOSTS']}")
    router.edit("dhcphosts.txt", dhcp_hosts_line(VM2, default_nic=False) + "\n", "")
    code, message = outcome(router.check("dhcp_check.py"))
    assert code == 1
    assert message == f"missing from {router.env['HC_DHCP_HOSTS']}: 02:00:4c:5f:00:02 10.1.1.6 vm-2"


def test_dhcp_check_compares_mac_ip_and_name_and_skips_vms_without_dhcp(router):
    router.edit("dhcphosts.txt", "10.1.1.5,vm-1", "10.1.1.9,vm-1")
    assert outcome(router.check("dhcp_check.py"))[0] == 1
    router.network.vms[0] = VM("vm-1", VM1.mac, VM1.ip, dhcp=False)
    router.set_data()
    assert outcome(router.check("dhcp_check.py")) == (0, f"all 1 VMs are in {router.env['HC_DHCP_HOSTS']}")
    (router.folder / "dhcphosts.txt").unlink()
    assert outcome(router.check("dhcp_check.py")) == (
        1, f"missing from {router.env['HC_DHCP_HOSTS']}: 02:00:4c:5f:00:02 10.1.1.6 vm-2")


def test_dns_check_names_the_missing_hosts_entry(router):
    router.edit("hosts", hosts_line(VM1) + "\n", "")
    assert outcome(router.check("dns_check.py")) == (1, f"missing from {router.env['HC_HOSTS']}: 10.1.1.5 vm-1")
    router.network.vms[0] = VM("vm-1", VM1.mac, VM1.ip, dns=False)
    router.set_data()
    assert outcome(router.check("dns_check.py"))[0] == 0


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("\tserver 192_168_1_30-80_1 10.1.1.6:8080 check\n", "", "lacks servers 10.1.1.6:8080"),
    ("\tmaxconn 4096", "\tmaxconn 2000", "global maxconn is 2000, expected 4096"),
    ("\tbalance roundrobin", "\tbalance leastconn", "balances by leastconn, expected roundrobin"),
    ("\tmode http\n", "", "'listen 192_168_1_30-80' is not in HTTP mode"),
    ("\tbind 192.168.1.30:80", "\tbind 192.168.1.31:80", "does not bind 192.168.1.30:80"),
    ("listen 192_168_1_30-80", "listen 192_168_1_30-81", "no 'listen 192_168_1_30-80' section"),
])
def test_haproxy_check_finds_each_difference(router, old, new, expected):
    router.edit("haproxy.cfg", old, new)
    code, message = outcome(router.check("haproxy_check.py"))
    assert code == 1 and expected in message, message


@pytest.mark.parametrize(("rule", "expected"), [
    (0, "PREROUTING 192.168.1.30:2222 -> 10.1.1.5:22"),
    (1, "OUTPUT 192.168.1.30:2222 -> 10.1.1.5:22"),
    (3, "OUTPUT 192.168.1.30:8000:8010 -> 10.1.1.6:9000-9010"),
])
def test_iptables_check_names_the_missing_dnat_rule(router, rule, expected):
    lines = (router.folder / "nat.rules").read_text().splitlines(keepends=True)
    del lines[3 + rule]
    (router.folder / "nat.rules").write_text("".join(lines))
    assert outcome(router.check("iptables_check.py")) == (1, f"missing DNAT rules: {expected}")


def test_gateways_check_retries_and_names_unreachable_gateways(router, tmp_path):
    counter = tmp_path / "pings"
    ping = tmp_path / "ping"
    # 10.1.1.1 answers the second try only; 192.168.1.1 never does.
    ping.write_text(f'#!/bin/sh\necho "$1" >> {counter}\n[ "$1" = 10.1.1.1 ] && [ "$(grep -c 10.1.1.1 {counter})" -ge 2 ]\n')
    ping.chmod(0o755)
    router.env["HC_PING"] = str(ping)
    assert outcome(router.check("gateways_check.py")) == (1, "gateways not answering ping: 192.168.1.1")
    assert counter.read_text().split().count("192.168.1.1") == 3


@pytest.mark.parametrize(("name", "field", "value", "expected"), [
    ("cpu_usage_check.py", "max_cpu", 5, "CPU usage 10.00% is above the threshold of 5%"),
    ("memory_usage_check.py", "max_memory", 30, "memory usage 40.00% is above the threshold of 30%"),
    ("disk_space_check.py", "min_disk_mb", 9999999, "below the 9999999 MB needed"),
])
def test_threshold_checks_fail_past_the_management_servers_threshold(router, name, field, value, expected):
    setattr(router.network, field, value)
    router.set_data()
    code, message = outcome(router.check(name))
    assert code == 1 and expected in message, message


def test_version_check_compares_the_release_line_and_the_signature(router):
    router.network.template_version = "Cloudstack Release 4.19.1 2024-06-01"
    router.network.scripts_version = "ffff"
    router.set_data()
    code, message = outcome(router.check("router_version_check.py"))
    assert code == 1
    assert f"template version in {router.env['HC_RELEASE_FILE']} is '{RELEASE}', the management server " \
           "expects 'Cloudstack Release 4.19.1 2024-06-01'" in message
    assert f"scripts signature in {router.env['HC_SIGNATURE_FILE']} is '{SIGNATURE}'" in message


@pytest.mark.parametrize(("name", "key"), [
    ("cpu_usage_check.py", "systemThresholds"), ("memory_usage_check.py", "systemThresholds"),
    ("disk_space_check.py", "systemThresholds"), ("router_version_check.py", "routerVersion"),
    ("gateways_check.py", "gateways"), ("dhcp_check.py", "virtualMachines"), ("dns_check.py", "virtualMachines"),
    ("haproxy_check.py", "haproxyData"), ("iptables_check.py", "portForwarding"),
])
def test_data_not_sent_makes_a_check_unknown(router, name, key):
    document = json.loads((router.folder / "data.json").read_text())
    del document["health_checks_config"][key]
    (router.folder / "data.json").write_text(json.dumps(document))
    code, message = outcome(router.check(name))
    assert code == 3 and "health check data" in message, message


@pytest.mark.parametrize(("name", "expected"), [
    ("dhcp_check.py", "no VMs with DHCP to check"), ("dns_check.py", "no VMs with DNS to check"),
    ("gateways_check.py", "no gateways to check"), ("haproxy_check.py", "no load balancer rules to check"),
    ("iptables_check.py", "no port forwarding rules to check"),
])
def test_a_network_without_entries_passes(router, name, expected):
    router.network = Network(template_version=RELEASE, scripts_version=SIGNATURE)
    router.set_data()
    assert outcome(router.check(name)) == (0, expected)


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_missing_or_malformed_data_fails_cleanly(router, content):
    data = router.folder / "data.json"
    if content is None:
        data.unlink()
    else:
        data.write_text(content)
    for name in BASIC + ADVANCED:
        code, message = outcome(router.check(name))
        assert code == 1 and message.startswith(f"health check data {data}"), (name, message)


def test_a_malformed_value_names_the_key(router):
    document = json.loads((router.folder / "data.json").read_text())
    document["health_checks_config"]["systemThresholds"] = "minDiskNeeded=1.0,maxCpuUsage=lots,maxMemoryUsage=95.0;"
    (router.folder / "data.json").write_text(json.dumps(document))
    assert outcome(router.check("cpu_usage_check.py")) == (
        1, "health check data: systemThresholds maxCpuUsage='lots' is not a number")
    document = json.loads((router.folder / "data.json").read_text())
    document["health_checks_config"]["virtualMachines"] = "vmName=vm-9,ip=10.1.1.9;"
    (router.folder / "data.json").write_text(json.dumps(document))
    assert outcome(router.check("dhcp_check.py")) == (
        1, "health check data: virtualMachines record 1 lacks macAddress")


# --------------------------------------------------------------------------------------------- runner


def run_runner(router: Router, *arguments: str, style: str = "status") -> subprocess.CompletedProcess[str]:
    results = router.folder / "results"
    results.mkdir(exist_ok=True)
    command = [sys.executable, str(RUNNER), *arguments, "--results-dir", str(results),
               "--monitor-conf", str(router.folder / "monitor.conf"), "--log", str(router.folder / "monitor.log"),
               "--result-style", style]
    if "--checks-dir" not in arguments:
        command += ["--checks-dir", str(CHECKS)]
    return subprocess.run(command, capture_output=True, text=True, env=router.env, timeout=300)


def results(router: Router, kind: str) -> dict:
    return json.loads((router.folder / "results" / f"{kind}_monitor_results.json").read_text())


def failing_file(router: Router, kind: str) -> Path:
    return router.folder / "results" / f"{kind}_failing_health_checks"


@pytest.mark.parametrize(("kind", "names"), [("basic", BASIC), ("advanced", ADVANCED)])
def test_runner_records_each_check_of_its_kind_in_cloudstacks_format(router, kind, names):
    started = time.time()
    done = run_runner(router, kind)
    assert done.returncode == 0, done.stderr
    document = results(router, kind)
    assert set(document) == {*names, "lastRun"}
    for name in names:
        entry = document[name]
        assert set(entry) == {"success", "lastUpdate", "lastRunDuration", "message"}
        assert all(isinstance(value, str) for value in entry.values()), entry
        assert entry["success"] == "SUCCESS" and entry["message"], entry
        assert started * 1000 - 1000 <= int(entry["lastUpdate"]) <= time.time() * 1000
        assert float(entry["lastRunDuration"]) >= 0
    assert set(document["lastRun"]) == {"start", "end", "duration"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?", document["lastRun"]["start"])
    assert float(document["lastRun"]["duration"]) >= 0
    assert not failing_file(router, kind).exists()
    assert sorted(p.name for p in (router.folder / "results").iterdir()) == [f"{kind}_monitor_results.json"]


def test_runner_lists_failing_checks_and_clears_the_list_once_they_pass(router):
    router.edit("dhcphosts.txt", dhcp_hosts_line(VM1) + "\n", "")
    router.edit("hosts", hosts_line(VM2) + "\n", "")
    run_runner(router, "advanced")
    assert failing_file(router, "advanced").read_text() == "dhcp_check.py,dns_check.py"
    document = results(router, "advanced")
    assert document["dhcp_check.py"]["success"] == "FAILED"
    assert "02:00:4c:5f:00:01 10.1.1.5 vm-1" in document["dhcp_check.py"]["message"]
    for name in ("dhcphosts.txt", "hosts"):
        (router.folder / name).write_text(router.files[name])
    run_runner(router, "advanced")
    assert not failing_file(router, "advanced").exists()


def test_runner_without_argument_runs_basic_then_advanced(router):
    assert run_runner(router).returncode == 0
    basic, advanced = results(router, "basic"), results(router, "advanced")
    assert set(basic) == {*BASIC, "lastRun"} and set(advanced) == {*ADVANCED, "lastRun"}
    assert basic["lastRun"]["end"] <= advanced["lastRun"]["start"]


def test_runner_leaves_out_excluded_checks(router):
    router.set_data(excluded="gateways_check.py, memory_usage_check.py")
    run_runner(router, "basic")
    assert set(results(router, "basic")) == {"cpu_usage_check.py", "disk_space_check.py", "router_version_check.py",
                                             "lastRun"}


def test_runner_runs_no_check_when_health_checks_are_disabled_or_not_pushed_yet(router):
    router.edit("dhcphosts.txt", dhcp_hosts_line(VM1) + "\n", "")  # would fail if it ran
    router.set_data(enabled=False)
    assert run_runner(router).returncode == 0
    assert set(results(router, "basic")) == {"lastRun"} and set(results(router, "advanced")) == {"lastRun"}
    assert not failing_file(router, "advanced").exists()
    (router.folder / "data.json").unlink()
    assert run_runner(router, "advanced").returncode == 0
    assert set(results(router, "advanced")) == {"lastRun"}
    (router.folder / "data.json").write_text("{broken")
    done = run_runner(router, "advanced")
    assert done.returncode == 1 and "health checks not run" in done.stderr
    assert set(results(router, "advanced")) == {"lastRun"}


@pytest.mark.parametrize(("release", "passed", "failed", "unknown"), [
    ("Cloudstack Release 4.20.0 2025-01-01", "true", "false", "true"),
    ("Cloudstack Release 4.21.0.0", "true", "false", "true"),
    ("Cloudstack Release 4.22.0", "SUCCESS", "FAILED", "UNKNOWN"),
    ("Cloudstack Release 5.0.1", "SUCCESS", "FAILED", "UNKNOWN"),
])
def test_runner_writes_success_in_the_words_of_the_templates_cloudstack(router, release, passed, failed, unknown):
    # Up to 4.21 the management server reads `success` with Boolean.parseBoolean; from 4.22 with
    # RouterHealthStatus.valueOf, which makes anything else UNKNOWN.
    (router.folder / "cloudstack-release").write_text(release + "\n")
    router.edit("hosts", hosts_line(VM2) + "\n", "")
    document = json.loads((router.folder / "data.json").read_text())
    del document["health_checks_config"]["portForwarding"]
    (router.folder / "data.json").write_text(json.dumps(document))
    run_runner(router, "advanced", "--release-file", str(router.folder / "cloudstack-release"), style="auto")
    outcome_words = {name: entry["success"] for name, entry in results(router, "advanced").items() if name != "lastRun"}
    assert outcome_words == {"dhcp_check.py": passed, "dns_check.py": failed, "haproxy_check.py": passed,
                             "iptables_check.py": unknown}
    assert failing_file(router, "advanced").read_text() == "dns_check.py"


def _user_check(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_runner_takes_user_checks_and_stops_one_that_hangs(router):
    checks = router.folder / "checks"
    checks.mkdir()
    for name in ("disk_space_check.py", "utility.py"):
        (checks / name).symlink_to(CHECKS / name)
    _user_check(checks, "my_check.sh", '[ "$1" = basic ] || exit 0\necho "custom warning"\nexit 2\n')
    _user_check(checks, "hang_check.sh", f'[ "$1" = basic ] || exit 0\nsleep 30 &\necho $! > {router.folder}/sleep.pid\n'
                                         'wait\n')
    started = time.monotonic()
    run_runner(router, "basic", "--checks-dir", str(checks), "--timeout", "2")
    assert time.monotonic() - started < 20
    document = results(router, "basic")
    assert set(document) == {"disk_space_check.py", "my_check.sh", "hang_check.sh", "lastRun"}
    assert (document["my_check.sh"]["success"], document["my_check.sh"]["message"]) == ("WARNING", "custom warning")
    assert document["hang_check.sh"]["success"] == "FAILED"
    assert document["hang_check.sh"]["message"] == "killed after 2s without a result"
    assert failing_file(router, "basic").read_text() == "hang_check.sh"
    # The sleep it started went with it (gone, or a zombie waiting for its new parent to reap it).
    stat_file = Path(f"/proc/{(router.folder / 'sleep.pid').read_text().strip()}/stat")
    assert not stat_file.exists() or stat_file.read_text().split(")")[-1].split()[0] == "Z"


def fake_systemctl(folder: Path, inactive: str, restart_works: bool = True) -> Path:
    """A stand-in for systemctl: every service active except `inactive` until it is restarted."""
    calls, state = folder / "systemctl.calls", folder / "restarted"
    restart = f"touch {state}" if restart_works else "echo 'Job failed' >&2; exit 1"
    fake = folder / "systemctl"
    fake.write_text(f"""#!/bin/sh
echo "$@" >> {calls}
case "$1 $2" in
  "is-active {inactive}.service") if [ -e {state} ]; then echo active; else echo inactive; exit 3; fi ;;
  "is-active "*) echo active ;;
  "restart {inactive}.service") {restart} ;;
esac
""")
    fake.chmod(0o755)
    return fake


def test_runner_restarts_a_monitored_service_that_is_down(router):
    (router.folder / "monitor.conf").write_text(monitor_conf())
    router.env["HC_SYSTEMCTL"] = str(fake_systemctl(router.folder, "dnsmasq"))
    run_runner(router, "basic")
    calls = (router.folder / "systemctl.calls").read_text().splitlines()
    assert "restart dnsmasq.service" in calls
    assert [call for call in calls if call.startswith("restart")] == ["restart dnsmasq.service"]
    document = results(router, "basic")
    services = {name: entry for name, entry in document.items() if name.endswith(".service")}
    assert sorted(services) == ["dhcp.service", "loadbalancing.service", "ssh.service", "webserver.service"]
    assert services["dhcp.service"]["success"] == "SUCCESS"
    assert services["dhcp.service"]["message"] == "service is running, was restarted"
    assert services["ssh.service"]["message"] == "service is running"
    assert not failing_file(router, "basic").exists()
    # The alert collector (getRouterAlerts.sh) takes the first two words, up to the comma, as the time.
    line = (router.folder / "monitor.log").read_text()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[INFO\] \[dnsmasq\] dnsmasq was inactive and "
                        r"has been restarted\n", line), line
    run_runner(router, "advanced")
    assert not [name for name in results(router, "advanced") if name.endswith(".service")]


def test_runner_reports_a_service_it_cannot_restart(router):
    (router.folder / "monitor.conf").write_text(monitor_conf())
    router.env["HC_SYSTEMCTL"] = str(fake_systemctl(router.folder, "haproxy", restart_works=False))
    run_runner(router, "basic")
    entry = results(router, "basic")["loadbalancing.service"]
    assert entry["success"] == "FAILED" and entry["message"].startswith("service down at last check ")
    assert failing_file(router, "basic").read_text() == "loadbalancing.service"
    assert "[ALERT] [haproxy] haproxy is inactive and could not be restarted: Job failed" in \
        (router.folder / "monitor.log").read_text()


@pytest.mark.host  # unshare --mount (root)
def test_cloudstacks_fetch_script_hands_our_results_to_the_management_server(router, cloudstack):
    """getRouterMonitorResults.sh reads /root: run it in a mount namespace where /root is the results folder,
    then read its output the way the management server's VirtualRoutingResource does.

    The namespace's mounts are made private first, so the bind never reaches the host's /root; inside a
    chroot (the release runs of these tests) / is no mount point and the chroot's namespace is private already.
    """
    router.edit("hosts", hosts_line(VM2) + "\n", "")
    (router.folder / "monitor.conf").write_text(monitor_conf())
    router.env["HC_SYSTEMCTL"] = str(fake_systemctl(router.folder, "dnsmasq", restart_works=False))
    run_runner(router)
    script = cloudstack / "systemvm/debian/opt/cloud/bin/getRouterMonitorResults.sh"
    isolate = 'if mountpoint -q /; then mount --make-rprivate / || exit 1; fi; mount --bind "$1" /root || exit 1'
    done = subprocess.run(["unshare", "--mount", "--propagation", "unchanged", "sh", "-c",
                           isolate + '; exec bash "$2" false', "sh", str(router.folder / "results"), str(script)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    failing, monitor, section = [], [], None
    for line in done.stdout.strip().split("\n"):
        line = line.strip()
        if "FAILING CHECKS" in line:
            section = failing
        elif "MONITOR RESULTS" in line:
            section = monitor
        else:
            assert section is not None, line
            if section is failing:
                failing += [word.strip() for word in line.split(",") if word.strip()]
            else:
                monitor.append(line)
    assert failing == ["dhcp.service", "dns_check.py"]
    checks = json.loads("".join(monitor))
    assert set(checks) == {"basic", "advanced"}
    assert set(checks["basic"]) == {*BASIC, "ssh.service", "dhcp.service", "loadbalancing.service",
                                    "webserver.service", "lastRun"}
    assert set(checks["advanced"]) == {*ADVANCED, "lastRun"}
    for kind in checks.values():
        for name, entry in kind.items():
            assert all(isinstance(value, str) for value in entry.values()), (name, entry)
            if name != "lastRun":
                assert entry["success"] in ("SUCCESS", "FAILED", "WARNING", "UNKNOWN")
                int(entry["lastUpdate"]), float(entry["lastRunDuration"])
    assert checks["advanced"]["dns_check.py"]["success"] == "FAILED"
    assert checks["advanced"]["dns_check.py"]["message"] == f"missing from {router.env['HC_HOSTS']}: 10.1.1.6 vm-2"
