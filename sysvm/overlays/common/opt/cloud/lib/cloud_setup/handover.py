"""sysvm-handover: after the role setup, hand the VM over to CloudStack's own scripts, then finish the boot.

A CloudStack 4.17+ host copies agent.zip, cloud-scripts.tgz and patch-sysvms.sh into /var/cache/cloud/
once sshd answers on the control address. This waits (bounded, as upstream) for a readable tgz,
unpacks it over / when its sha512 differs from the recorded signature, and runs CloudStack's
bootstrap.sh (the role's own setup, agent.zip for console proxy and secondary storage) and
postinit.sh (enabled_svcs, disabled_svcs, boot_up_done). Scripts baked into the image at build time
are used the same way when the host sends nothing. Without any CloudStack scripts the image's own
setup stands and this only marks the boot as done, so get_template_version.sh answers either way.
A User VM role (a Shared FileSystem VM, a Kubernetes node) gets no scripts from the host, so nothing is
waited for; without CloudStack's scripts this starts cloud-init for its user data, as theirs would.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import tarfile
import time
import zlib
from dataclasses import dataclass
from typing import Callable, List, Optional

from cloud_setup.fileops import write_if_changed
from cloud_setup.paths import Paths

log = logging.getLogger("cloud_setup")

HOST_WAIT_SECONDS = 120.0  # upstream's cloud-early-config tries 60 times, 2 s apart
SETTLE_SECONDS = 5.0  # an unreadable file that stopped growing this long is not still being copied
SCRIPT_TIMEOUT_SECONDS = 900.0  # bootstrap.sh of a router runs a lot of Python: allow for emulation
# cloud-init's stages (cloud-init.service wants the local one); started without waiting for them to end.
CLOUD_INIT_UNITS = ["cloud-init.service", "cloud-config.service", "cloud-final.service"]
PROVISIONED = "home/cloud/success"  # the user data of both User VM roles writes it when it has done its work

# Runs a script with its output going to the journal; returns the exit status (None: could not run it).
ScriptRunner = Callable[[List[str], float], Optional[int]]


def run_script(argv: list[str], timeout: float) -> int | None:
    log.info("running %s", " ".join(argv))
    try:
        status = subprocess.run(argv, timeout=timeout, check=False, stdin=subprocess.DEVNULL).returncode
    except (OSError, subprocess.TimeoutExpired) as error:
        log.error("%s did not complete: %s", argv[0], error)
        return None
    if status == 0:
        log.info("%s finished", argv[0])
    else:
        log.error("%s exited with status %d", argv[0], status)
    return status


def unreadable_reason(archive: str) -> str | None:
    """Why the file is not a complete gzip-compressed tar, or None when it is one."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            if not tar.getmembers():  # reads the whole stream, so a truncated copy fails here
                return "the archive is empty"
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        return str(error) or type(error).__name__
    return None


def sha512_of(path: str) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Handover:
    paths: Paths
    role: str
    run: ScriptRunner = run_script
    wait_seconds: float = HOST_WAIT_SECONDS
    settle_seconds: float = SETTLE_SECONDS
    poll_seconds: float = 1.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def wait_for_host_scripts(self) -> bool:
        """True once the host's cloud-scripts.tgz is complete; False if none came or it is corrupt."""
        archive = self.paths.host_scripts
        deadline = self.clock() + self.wait_seconds
        last_seen = None  # (size, mtime) of an unreadable file, and since when it has not changed
        stable_since = 0.0
        log.info("waiting up to %.0fs for the host to copy %s", self.wait_seconds, archive)
        while True:
            if archive.is_file():
                reason = unreadable_reason(str(archive))
                if reason is None:
                    log.info("%s arrived (%d bytes)", archive, archive.stat().st_size)
                    return True
                state = (archive.stat().st_size, archive.stat().st_mtime)
                if state != last_seen:
                    last_seen, stable_since = state, self.clock()
                elif self.clock() - stable_since >= self.settle_seconds:
                    self._reject(reason)
                    return False
            if self.clock() >= deadline:
                if archive.is_file():
                    self._reject(unreadable_reason(str(archive)) or "still changing")
                else:
                    log.error("the host copied no %s within %.0fs: CloudStack's start sequence did not reach "
                              "this VM", archive.name, self.wait_seconds)
                return False
            self.sleep(self.poll_seconds)

    def _reject(self, reason: str) -> None:
        archive = self.paths.host_scripts
        rejected = archive.with_name(archive.name + ".rejected")
        os.replace(archive, rejected)
        log.error("%s from the host is not a readable gzip tar (%s); kept as %s and not used",
                  archive.name, reason, rejected)

    def unpack_host_scripts(self) -> bool:
        """Unpack the host's scripts over / unless they are the ones already in place; True on success."""
        archive = self.paths.host_scripts
        checksum = sha512_of(str(archive))
        recorded = self.paths.signature.read_text().strip() if self.paths.signature.is_file() else ""
        if checksum == recorded:
            log.info("cloud-scripts.tgz from the host matches the scripts in place (sha512 %s...)", checksum[:16])
            return True
        if self.run(["tar", "-xzf", str(archive), "-C", str(self.paths.root)], SCRIPT_TIMEOUT_SECONDS) != 0:
            log.error("could not unpack %s; staying on the scripts in place", archive)
            return False
        write_if_changed(self.paths.signature, checksum + "\n")
        write_if_changed(self.paths.patch_required, "")
        log.info("unpacked CloudStack's scripts from %s (sha512 %s...)", archive, checksum[:16])
        return True

    def keep_host_scripts(self) -> None:
        """As upstream: the tgz moves to /usr/share/cloud, the agent bundle's zip is not kept."""
        if self.paths.host_scripts.is_file():
            self.paths.kept_scripts.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.paths.host_scripts, self.paths.kept_scripts)
        if self.paths.host_agent_zip.is_file():
            self.paths.host_agent_zip.unlink()

    def start_cloud_init(self) -> None:
        """The user data runs once: after it succeeded, a reboot leaves cloud-init off (as CloudStack's setup)."""
        if (self.paths / PROVISIONED).exists():
            log.info("%s exists: the user data ran on an earlier boot; cloud-init is not started", PROVISIONED)
            return
        log.info("starting cloud-init for the user data on the ConfigDrive")
        self.run(["systemctl", "start", "--no-block", *CLOUD_INIT_UNITS], SCRIPT_TIMEOUT_SECONDS)

    def finish(self, from_host: bool, user_vm: bool = False) -> None:
        """Run CloudStack's bootstrap and post-init when the image has them, then mark the boot as done."""
        if self.paths.bootstrap.is_file():
            if self.paths.host_agent_zip.is_file():
                # The host sent an agent bundle: bootstrap.sh installs it only when asked to.
                write_if_changed(self.paths.patch_required, "")
            source = "the host's" if from_host else "the image's"
            log.info("handing over to %s CloudStack scripts: %s", source, self.paths.bootstrap)
            self.run(["/bin/bash", str(self.paths.bootstrap)], SCRIPT_TIMEOUT_SECONDS)
            self.keep_host_scripts()
            if self.paths.postinit.is_file():
                self.run(["/bin/bash", str(self.paths.postinit)], SCRIPT_TIMEOUT_SECONDS)
        else:
            log.info("no CloudStack scripts in the image: the image's own %s setup stands", self.role or "default")
            if user_vm:
                self.start_cloud_init()
        if not self.paths.boot_up_done.is_file():
            write_if_changed(self.paths.boot_up_done, time.strftime("%a %b %d %H:%M:%S %Z %Y") + "\n")
        log.info("boot up done")
