"""The CloudStack side of a system VM start, played against a booted VM the way a 4.17+ KVM host and its
management server do it (LibvirtStartCommandWrapper, VirtualRoutingResource; see CloudStack's
scripts/network/domr/router_proxy.sh): SSH to port 3922 of the control address with the management key,
copy agent.zip, cloud-scripts.tgz and patch-sysvms.sh into /var/cache/cloud/ with the legacy scp
protocol, poll patched.sh (console proxy, secondary storage), ask get_template_version.sh, and for a
router send configuration files through update_config.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sysvm import log
from sysvm.cloudstack import AGENT_NAME, SCRIPTS_NAME, CloudStackTree, pack_agent, pack_scripts
from sysvm.errors import SysvmError
from sysvm.fsutil import hash_file
from sysvm.process import run

HOST_FOLDER = "/var/cache/cloud"
PATCH_CHECK = "/opt/cloud/bin/patched.sh /opt/cloud/bin/keystore*"
VERSION_QUERY = "/opt/cloud/bin/get_template_version.sh"
AGENT_ROLES = ("consoleproxy", "secstorage")
ROUTER_ROLES = ("router", "vpcrouter", "dhcpsrvr")
ROUTER_CONFIG_ID = "5b1c3f0e-7d2a-4c1e-9f3b-000000000001"


@dataclass(frozen=True)
class HostFiles:
    """What the host copies into every system VM it starts (packed once per verify run)."""

    scripts: Path
    agent: Path
    patch: Path

    @property
    def scripts_sha512(self) -> str:
        return hash_file(self.scripts, "sha512")

    def all(self) -> list[Path]:
        return [self.agent, self.scripts, self.patch]


def host_files(tree: CloudStackTree, folder: Path) -> HostFiles:
    folder.mkdir(parents=True, exist_ok=True)
    pack_scripts(tree, folder / SCRIPTS_NAME)
    pack_agent(tree, folder / AGENT_NAME)
    return HostFiles(folder / SCRIPTS_NAME, folder / AGENT_NAME, tree.patch_script)


@dataclass
class Remote:
    """Commands on the VM over SSH, as the host's Java client runs them (one connection per command)."""

    name: str
    ssh_config: Path
    log: Path
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.log.write_text("")  # one boot's conversation

    def _record(self, text: str) -> None:
        with self.log.open("a", encoding="utf-8") as handle:
            handle.write(text)

    def ssh(self, command: str, timeout: float = 600, merge_stderr: bool = False) -> tuple[int, str]:
        result = run(["ssh", "-F", self.ssh_config, self.name, command], check=False, capture=True, timeout=timeout)
        out, err = result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
        self._record(f"$ {command}\n{out}{err}# exit {result.returncode}\n")
        return result.returncode, out + err if merge_stderr else out

    def copy(self, files: list[Path], destination: str) -> None:
        # -O: the legacy SCP protocol, which is what the host's Java SSH client speaks.
        result = run(["scp", "-O", "-F", self.ssh_config, *files, f"{self.name}:{destination}"], check=False,
                     capture=True, timeout=600)
        self._record(f"$ scp -O {' '.join(f.name for f in files)} -> {destination}\n# exit {result.returncode}\n")
        if result.returncode != 0:
            raise SysvmError(f"{self.name}: scp of {', '.join(f.name for f in files)} into {destination} failed: "
                             f"{result.stderr.decode(errors='replace').strip()}")


def poll(what: str, attempt: Callable[[], bool], timeout: float, interval: float = 1.0) -> float:
    """Retry until `attempt` succeeds, as the host retries patched.sh; returns the seconds it took."""
    started = time.monotonic()
    while not attempt():
        if time.monotonic() - started > timeout:
            raise SysvmError(f"{what} did not succeed within {timeout:.0f}s")
        time.sleep(interval)
    return time.monotonic() - started


def start_sequence(remote: Remote, role: str, files: HostFiles, timeout: float) -> str:
    """The host's steps after sshd answers; returns get_template_version.sh's answer."""
    started = time.monotonic()
    log.step(f"CloudStack start: copying {', '.join(path.name for path in files.all())}")
    remote.copy(files.all(), f"{HOST_FOLDER}/")
    remote.timings["copied_s"] = round(time.monotonic() - started, 1)
    if role in AGENT_ROLES:
        log.step("CloudStack start: waiting for patched.sh")
        remote.timings["patched_s"] = round(poll(
            f"{remote.name}: {PATCH_CHECK}", lambda: remote.ssh(PATCH_CHECK, timeout=60)[0] == 0, timeout), 1)
    log.step("CloudStack start: asking get_template_version.sh")
    status, answer = remote.ssh(VERSION_QUERY, timeout=timeout)
    if status != 0 or "&" not in answer:
        raise SysvmError(f"{remote.name}: {VERSION_QUERY} answered {answer.strip()!r} (exit {status})")
    remote.timings["version_s"] = round(time.monotonic() - started, 1)
    return answer.strip()


def router_config_file(documents: dict[str, dict[str, object]]) -> str:
    """One VR-<uuid>.cfg as the host aggregates a start's configuration: each JSON file, then the
    update_config.py call that applies it (CloudStack's vr_cfg.sh reads this format)."""
    lines = ["#Apache CloudStack Virtual Router Config File", "<version>", "1.0", "</version>"]
    for name, document in documents.items():
        lines += ["<file>", f"{HOST_FOLDER}/{name}", json.dumps(document), "</file>",
                  "<script>", f"/opt/cloud/bin/update_config.py {name}", "</script>"]
    return "\n".join(lines) + "\n"


def send_router_config(remote: Remote, documents: dict[str, dict[str, object]], staging: Path) -> None:
    """Copy the aggregated configuration in and run vr_cfg.sh on it, as the host does when a start's
    command batch finishes."""
    if not documents:
        return
    log.step("CloudStack start: router configuration (vr_cfg.sh)")
    staging.mkdir(parents=True, exist_ok=True)
    config = staging / f"VR-{ROUTER_CONFIG_ID}.cfg"
    config.write_text(router_config_file(documents))
    remote.copy([config], f"{HOST_FOLDER}/")
    _apply(remote, f"/opt/cloud/bin/vr_cfg.sh -c {HOST_FOLDER}/{config.name}", config.name)


def apply_router_document(remote: Remote, name: str, document: dict[str, object], staging: Path) -> None:
    """One change as the host applies it once the router runs: the JSON file, then update_config.py on it."""
    log.step(f"CloudStack: update_config.py {name.split('.json')[0]}")
    staging.mkdir(parents=True, exist_ok=True)
    path = staging / name
    path.write_text(json.dumps(document))
    remote.copy([path], f"{HOST_FOLDER}/")
    _apply(remote, f"/opt/cloud/bin/update_config.py {name}", name)


def _apply(remote: Remote, command: str, name: str) -> None:
    """A step that failed is reported on standard error or by its exit status, as the host sees it."""
    status, out = remote.ssh(command, merge_stderr=True)
    if status != 0 or "execution failed" in out:
        remote.ssh("tail -n 40 /var/log/cloud.log")  # what went wrong, in the host log
        raise SysvmError(f"{remote.name}: {command.split()[0].rsplit('/', 1)[-1]} {name} failed (exit {status}): "
                         f"{out.strip()[-300:]} (the VM's cloud.log is in {remote.log})")
