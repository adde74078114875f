"""Router health checks and their runner, run as processes against fixture files and injected commands."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ROOT / "overlays/router/root/health_checks"
RUNNER = ROOT / "overlays/router/root/monitorServices.py"
BASIC = ["cpu_usage_check.py", "disk_space_check.py", "memory_usage_check.py", "gateways_check.py",
         "router_version_check.py"]
ADVANCED = ["dhcp_check.py", "dns_check.py", "haproxy_check.py", "iptables_check.py"]

HAPROXY = """global
    maxconn 4096
    daemon

defaults
    mode tcp

listen 192.168.1.30-80
    bind 192.168.1.30:80
    balance roundrobin
    server vm1 10.1.1.5:80 check
    server vm2 10.1.1.6:80 check
"""
IPTABLES_NAT = """*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -d 192.168.1.30/32 -i eth2 -p tcp -m tcp --dport 2222 -j DNAT --to-destination 10.1.1.5:22
COMMIT
"""


@pytest.fixture
def router(tmp_path) -> tuple[dict[str, str], dict]:
    """A passing router: files and commands as the checks see them, plus the data that matches them."""
    (tmp_path / "stat").write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    (tmp_path / "stat.later").write_text("cpu  110 0 110 980 0 0 0 0 0 0\n")
    (tmp_path / "meminfo").write_text("MemTotal: 1000000 kB\nMemFree: 500000 kB\nMemAvailable: 600000 kB\n")
    (tmp_path / "release").write_text("Cloudstack Release 4.20.0 2025-01-01\n")
    (tmp_path / "signature").write_text("0123abcd\n")
    (tmp_path / "dhcphosts.txt").write_text("02:00:4c:5f:00:01,10.1.1.5,vm-1,infinite\n02:00:4c:5f:00:02,10.1.1.6,vm-2,infinite\n")
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n10.1.1.5 vm-1\n10.1.1.6 vm-2\n")
    (tmp_path / "haproxy.cfg").write_text(HAPROXY)
    (tmp_path / "nat.rules").write_text(IPTABLES_NAT)
    data = {
        "thresholds": {"min_free_disk_mb": 1, "max_cpu_percent": 95, "max_memory_percent": 95},
        "gateways": ["10.1.1.1", "192.168.1.1"],
        "router_version": {"template_version": "4.20.0", "scripts_signature": "0123abcd"},
        "dhcp_entries": [{"mac": "02:00:4c:5f:00:01", "ip": "10.1.1.5", "hostname": "vm-1"},
                         {"mac": "02:00:4c:5f:00:02", "ip": "10.1.1.6", "hostname": "vm-2"}],
        "dns_entries": [{"ip": "10.1.1.5", "hostname": "vm-1"}, {"ip": "10.1.1.6", "hostname": "vm-2"}],
        "load_balancer_rules": [{"public_ip": "192.168.1.30", "public_port": 80,
                                 "backends": ["10.1.1.5:80", "10.1.1.6:80"], "max_connections": 4096}],
        "port_forwarding_rules": [{"public_ip": "192.168.1.30", "public_port": 2222, "protocol": "tcp",
                                   "private_ip": "10.1.1.5", "private_port": 22}],
    }
    (tmp_path / "data.json").write_text(json.dumps(data))
    env = {
        **os.environ,
        "HC_DATA": str(tmp_path / "data.json"),
        "HC_PROC_STAT_PATH": str(tmp_path / "stat"),
        "HC_PROC_STAT_LATER_PATH": str(tmp_path / "stat.later"),
        "HC_MEMINFO_PATH": str(tmp_path / "meminfo"),
        "HC_CPU_SAMPLE_S": "0",
        "HC_DISK_PATH": str(tmp_path),
        "HC_RELEASE_FILE": str(tmp_path / "release"),
        "HC_SIGNATURE_FILE": str(tmp_path / "signature"),
        "HC_DHCP_HOSTS": str(tmp_path / "dhcphosts.txt"),
        "HC_HOSTS": str(tmp_path / "hosts"),
        "HC_HAPROXY_CFG": str(tmp_path / "haproxy.cfg"),
        "HC_PING": "true",
        "HC_IPTABLES_SAVE": f"cat {tmp_path / 'nat.rules'}",
        "HC_PIDOF": "true",
    }
    return env, data


def run_check(name: str, kind: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CHECKS / name), kind], capture_output=True, text=True, env=env, timeout=30)


def write_data(env: dict[str, str], data: dict) -> None:
    Path(env["HC_DATA"]).write_text(json.dumps(data))


@pytest.mark.parametrize("name", BASIC + ADVANCED)
def test_each_check_passes_on_consistent_data(name, router):
    env, _ = router
    kind = "basic" if name in BASIC else "advanced"
    result = run_check(name, kind, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(result.stdout.strip().splitlines()) == 1 and result.stderr == ""


@pytest.mark.parametrize("name", BASIC + ADVANCED)
def test_a_check_given_the_other_type_prints_nothing(name, router):
    env, _ = router
    other = "advanced" if name in BASIC else "basic"
    result = run_check(name, other, env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_every_check_is_executable_and_the_helper_is_not():
    for name in BASIC + ADVANCED:
        assert os.access(CHECKS / name, os.X_OK), name
    assert not os.access(CHECKS / "utility.py", os.X_OK)


def _fails(name: str, env: dict[str, str], expected: str) -> None:
    kind = "basic" if name in BASIC else "advanced"
    result = run_check(name, kind, env)
    assert result.returncode == 1, result.stdout
    assert expected in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_disk_below_threshold(router):
    env, data = router
    data["thresholds"]["min_free_disk_mb"] = 10**12
    write_data(env, data)
    _fails("disk_space_check.py", env, "is below 1000000000000 MB")


def test_cpu_above_threshold(router):
    env, data = router
    data["thresholds"]["max_cpu_percent"] = 5  # the two samples differ by 20 busy of 200 ticks
    write_data(env, data)
    _fails("cpu_usage_check.py", env, "CPU usage 10.0% is above 5%")


def test_memory_above_threshold(router):
    env, data = router
    data["thresholds"]["max_memory_percent"] = 30
    write_data(env, data)
    _fails("memory_usage_check.py", env, "memory usage 40.0% is above 30%")


def test_unreachable_gateway_via_injected_ping(router, tmp_path):
    env, _ = router
    ping = tmp_path / "ping"
    ping.write_text("#!/bin/sh\n[ \"$1\" != 192.168.1.1 ]\n")
    ping.chmod(0o755)
    env["HC_PING"] = str(ping)
    _fails("gateways_check.py", env, "gateways not answering ping: 192.168.1.1")


def test_version_mismatch(router):
    env, data = router
    data["router_version"]["template_version"] = "4.19.1"
    write_data(env, data)
    _fails("router_version_check.py", env, "template version 4.20.0 does not match expected 4.19.1")


def test_signature_mismatch(router):
    env, data = router
    data["router_version"]["scripts_signature"] = "ffff"
    write_data(env, data)
    _fails("router_version_check.py", env, "scripts signature 0123abcd does not match expected ffff")


def test_missing_dhcp_entry(router):
    env, _ = router
    Path(env["HC_DHCP_HOSTS"]).write_text("02:00:4c:5f:00:01,10.1.1.5,vm-1,infinite\n")
    _fails("dhcp_check.py", env, "missing DHCP entries")


def test_dnsmasq_not_running(router):
    env, _ = router
    env["HC_PIDOF"] = "false"
    _fails("dhcp_check.py", env, "dnsmasq is not running")


def test_missing_dns_entry(router):
    env, _ = router
    Path(env["HC_HOSTS"]).write_text("127.0.0.1 localhost\n10.1.1.5 vm-1\n")
    _fails("dns_check.py", env, "missing DNS entries")


def test_wrong_haproxy_maxconn(router):
    env, _ = router
    Path(env["HC_HAPROXY_CFG"]).write_text(HAPROXY.replace("maxconn 4096", "maxconn 2000"))
    _fails("haproxy_check.py", env, "has maxconn 2000, expected 4096")


def test_missing_haproxy_backend(router):
    env, _ = router
    Path(env["HC_HAPROXY_CFG"]).write_text(HAPROXY.replace("    server vm2 10.1.1.6:80 check\n", ""))
    _fails("haproxy_check.py", env, "lacks backends 10.1.1.6:80")


def test_missing_dnat_rule(router):
    env, _ = router
    Path(env["HC_IPTABLES_SAVE"].split()[1]).write_text("*nat\nCOMMIT\n")
    _fails("iptables_check.py", env, "missing DNAT rules: tcp 192.168.1.30:2222 -> 10.1.1.5:22")


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_missing_or_malformed_data_fails_cleanly(router, content):
    env, _ = router
    data = Path(env["HC_DATA"])
    if content is None:
        data.unlink()
    else:
        data.write_text(content)
    for name in BASIC + ADVANCED:
        result = run_check(name, "basic" if name in BASIC else "advanced", env)
        assert result.returncode == 1 and "health check data" in result.stdout, name
        assert "Traceback" not in result.stderr


def test_malformed_entry_names_the_key(router):
    env, data = router
    data["dhcp_entries"] = [{"ip": "10.1.1.5"}]
    write_data(env, data)
    _fails("dhcp_check.py", env, "health check data: dhcp_entries[0] needs mac, ip")


# --------------------------------------------------------------------------------------------- runner


def run_runner(kind: str, env: dict[str, str], checks: Path, results: Path, *extra: str):
    return subprocess.run([sys.executable, str(RUNNER), kind, "--checks-dir", str(checks), "--results-dir",
                           str(results), "--no-service-monitor", *extra], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize(("kind", "names", "result_file"), [("basic", BASIC, "basic_monitor_results.json"),
                                                            ("advanced", ADVANCED, "advance_monitor_results.json")])
def test_runner_records_each_check_of_its_type(router, tmp_path, kind, names, result_file):
    env, _ = router
    result = run_runner(kind, env, CHECKS, tmp_path)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / result_file).read_text())
    assert document["type"] == kind
    assert set(document["checks"]) == set(names)
    for outcome in document["checks"].values():
        assert outcome["success"] is True and outcome["message"]
        assert outcome["start_time"] <= outcome["end_time"] and outcome["duration_ms"] >= 0
    assert document["start_time"] <= document["end_time"] and document["duration_ms"] >= 0
    assert not list(tmp_path.glob(".*.tmp"))


def _user_check(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_runner_exclude_list_user_checks_and_timeout(router, tmp_path):
    env, data = router
    checks = tmp_path / "checks"
    checks.mkdir()
    for name in BASIC:
        (checks / name).symlink_to(CHECKS / name)
    (checks / "utility.py").symlink_to(CHECKS / "utility.py")
    _user_check(checks, "my_check.sh", '[ "$1" = basic ] || exit 0\necho "custom ok"\n')
    _user_check(checks, "hang_check.sh", '[ "$1" = basic ] || exit 0\nsleep 30\n')
    data["excluded_checks"] = ["gateways_check.py"]
    write_data(env, data)
    results = tmp_path / "results"
    results.mkdir()
    run_runner("basic", env, checks, results, "--timeout", "2", "--exclude", "memory_usage_check.py")
    document = json.loads((results / "basic_monitor_results.json").read_text())
    assert "gateways_check.py" not in document["checks"] and "memory_usage_check.py" not in document["checks"]
    assert document["checks"]["my_check.sh"] == {**document["checks"]["my_check.sh"], "success": True,
                                                 "message": "custom ok"}
    hang = document["checks"]["hang_check.sh"]
    assert hang["success"] is False and "killed after 2s" in hang["message"]


def test_runner_restarts_a_stopped_monitored_service(router, tmp_path):
    env, _ = router
    state = tmp_path / "systemctl.log"
    fake = tmp_path / "systemctl"
    # A stand-in for systemctl: dnsmasq is enabled but stopped, everything else enabled and active.
    fake.write_text(f"""#!/bin/sh
echo "$@" >> {state}
case "$1 $2" in
  "is-enabled dnsmasq.service"|"is-enabled ssh.service") echo enabled ;;
  "is-enabled "*) echo disabled; exit 1 ;;
  "is-active dnsmasq.service") echo inactive; exit 3 ;;
  "is-active "*) echo active ;;
esac
""")
    fake.chmod(0o755)
    env["HC_SYSTEMCTL"] = str(fake)
    log = tmp_path / "monitor.log"
    subprocess.run([sys.executable, str(RUNNER), "basic", "--checks-dir", str(tmp_path / "none"),
                    "--results-dir", str(tmp_path), "--log", str(log)], env=env, check=True, timeout=60)
    assert "restart dnsmasq.service" in state.read_text()
    assert "restart ssh.service" not in state.read_text()
    assert "service dnsmasq was inactive: restarted" in log.read_text()
