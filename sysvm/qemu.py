"""Booting images in QEMU: the KVM probe, and a VM handle with a logged serial console and a hard timeout."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from sysvm import log, tools
from sysvm.config import QemuMachine
from sysvm.errors import SysvmError
from sysvm.fsutil import atomic_write
from sysvm.process import run, spawn
from sysvm.render import SSH_PORT

# A guest proves KVM works when its kernel prints its banner; a guest that hangs under nested KVM prints nothing.
PROBE_MESSAGE = b"Linux version"
PROBE_KERNEL = "probe-vmlinuz"  # the disk stage keeps a copy of the image's kernel here, under output/cache
PROBE_TIMEOUT_S = 20.0


def _boot_id() -> str:
    path = Path("/proc/sys/kernel/random/boot_id")
    return path.read_text().strip() if path.is_file() else "unknown"


def probe_kvm(cache_dir: Path) -> bool:
    """True only when a kernel started with KVM actually runs (nested KVM can hang instead)."""
    kernel = cache_dir / PROBE_KERNEL
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    if not kernel.is_file():
        log.warning(f"no kernel at {kernel} to probe KVM with: using TCG")
        return False
    record = cache_dir / "kvm-probe.json"
    boot_id = _boot_id()
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("boot_id") == boot_id:
            return bool(saved["kvm"])
    cache_dir.mkdir(parents=True, exist_ok=True)
    console = cache_dir / "kvm-probe.serial"
    console.unlink(missing_ok=True)
    command = ["qemu-system-x86_64", "-machine", "accel=kvm", "-cpu", "host", "-m", "256", "-nodefaults",
               "-display", "none", "-no-reboot", "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1",
               "-serial", f"file:{console}"]
    log.say(f"probing KVM (up to {PROBE_TIMEOUT_S:.0f}s)")
    works = False
    with spawn(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            if console.is_file() and PROBE_MESSAGE in console.read_bytes():
                works = True
                break
            time.sleep(0.5)
    atomic_write(record, json.dumps({"boot_id": boot_id, "kvm": works}))
    log.say(f"KVM {'works' if works else 'does not work here: using TCG (software emulation)'}")
    return works


def accelerator(setting: str, cache_dir: Path, architecture: str) -> str:
    """'kvm' or 'tcg' for a setting of auto, kvm or tcg; an image of another architecture than the host's
    (Debian's name) is always emulated."""
    if architecture != tools.host_architecture():
        return "tcg"
    if setting == "auto":
        return "kvm" if probe_kvm(cache_dir) else "tcg"
    return setting


# ------------------------------------------------------------------------------------------ VM harness


@dataclass(frozen=True)
class Forward:
    """A TCP port of the guest reached from an address of this host, on the same port number."""

    host_address: str
    port: int


@dataclass(frozen=True)
class Nic:
    network: str  # user-mode network, e.g. 169.254.0.0/16
    forward_ssh_to: str = ""  # guest address whose sshd is forwarded from 127.0.0.1
    guest_ssh_port: int = SSH_PORT  # a system VM's sshd port; a User VM's is 22
    forwards: tuple[Forward, ...] = ()  # more ports of the forward_ssh_to address
    tap: str = ""  # instead of a user-mode network: this tap device, which the caller made (see routernet.py)
    mac: str = ""  # instead of nic_mac(index): for VMs that share a network


@dataclass(frozen=True)
class Drive:
    """A disk beside the boot disk (virtio), or an ISO in a CD-ROM drive (SCSI, as every machine type has)."""

    path: Path
    disk_format: str = "raw"
    cdrom: bool = False
    name: str = ""  # the disk's QEMU id, for monitor commands such as block_resize


@dataclass
class VirtualMachine:
    """One QEMU guest: a throwaway scratch disk over the image, serial console in a file, guest agent on a socket."""

    name: str
    disk: Path  # the image to boot (any format qemu reads); never written to
    disk_format: str
    folder: Path  # where the scratch disk, sockets and console log live
    machine: QemuMachine
    accel: str
    memory_mib: int
    nics: list[Nic] = field(default_factory=list)
    disk_mib: int = 0  # the throwaway disk's size; 0: the image's own
    drives: list[Drive] = field(default_factory=list)  # used as they are: the caller owns them
    process: subprocess.Popen[bytes] | None = None
    ssh_port: int = 0
    started_at: float = 0.0  # time.monotonic() when QEMU was started
    _owner: ExitStack = field(default_factory=ExitStack, repr=False)  # holds the QEMU process while it runs

    @property
    def console_log(self) -> Path:
        return self.folder / f"{self.name}-serial.log"

    @property
    def scratch_disk(self) -> Path:
        return self.folder / f"{self.name}-scratch.qcow2"

    @property
    def agent_socket(self) -> Path:
        return self.folder / f"{self.name}-qga.sock"

    @property
    def monitor_socket(self) -> Path:
        """QEMU's own monitor (QMP): what a host's libvirt uses to change a running VM, e.g. grow a disk."""
        return self.folder / f"{self.name}-qmp.sock"

    def command(self) -> list[str]:
        scratch_disk = self.scratch_disk
        command = [self.machine.binary, "-name", self.name, "-machine", f"{self.machine.machine},accel={self.accel}",
                   "-m", str(self.memory_mib), "-smp", "1", "-nodefaults", "-display", "none",
                   "-serial", f"file:{self.console_log}",
                   "-drive", f"file={scratch_disk},format=qcow2,if=virtio,cache=unsafe",
                   "-qmp", f"unix:{self.monitor_socket},server=on,wait=off",
                   "-chardev", f"socket,id=qga0,path={self.agent_socket},server=on,wait=off",
                   "-device", "virtio-serial", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]
        if self.accel == "kvm":
            command += ["-cpu", "host"]
        elif self.machine.cpu:
            command += ["-cpu", self.machine.cpu]
        if self.machine.firmware:
            command += ["-bios", self.machine.firmware]
        if self.machine.vga:
            command += ["-vga", self.machine.vga]
        for index, nic in enumerate(self.nics):
            if nic.tap:
                netdev = f"tap,id=net{index},ifname={nic.tap},script=no,downscript=no"
            else:
                netdev = f"user,id=net{index},net={nic.network},restrict=on"
            if nic.forward_ssh_to:
                netdev += f",hostfwd=tcp:127.0.0.1:{self.ssh_port}-{nic.forward_ssh_to}:{nic.guest_ssh_port}"
                netdev += "".join(f",hostfwd=tcp:{forward.host_address}:{forward.port}-{nic.forward_ssh_to}:"
                                  f"{forward.port}" for forward in nic.forwards)
            command += ["-netdev", netdev, "-device", f"virtio-net-pci,netdev=net{index},mac={nic.mac or nic_mac(index)}"]
        if any(drive.cdrom for drive in self.drives):
            command += ["-device", "virtio-scsi-pci,id=scsi0"]
        for index, drive in enumerate(self.drives):
            if drive.cdrom:
                command += ["-drive", f"file={drive.path},format=raw,if=none,media=cdrom,readonly=on,id=cd{index}",
                            "-device", f"scsi-cd,bus=scsi0.0,drive=cd{index}"]
            else:
                named = f",id={drive.name}" if drive.name else ""
                command += ["-drive", f"file={drive.path},format={drive.disk_format},if=virtio,cache=unsafe{named}"]
        return command

    @property
    def guest_ssh_port(self) -> int:
        return next((nic.guest_ssh_port for nic in self.nics if nic.forward_ssh_to), SSH_PORT)

    @property
    def ssh_address(self) -> str:
        """What a message calls the address sshd answers on: a system VM's control address, a User VM's own."""
        return "the control address" if self.guest_ssh_port == SSH_PORT else "the guest address"

    def __enter__(self) -> VirtualMachine:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Boot the VM; stop() (or leaving the `with` block) ends QEMU on every path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        scratch_disk = self.scratch_disk
        scratch_disk.unlink(missing_ok=True)
        self.agent_socket.unlink(missing_ok=True)
        self.monitor_socket.unlink(missing_ok=True)
        self.console_log.unlink(missing_ok=True)
        size = [f"{self.disk_mib}M"] if self.disk_mib else []
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", self.disk_format, "-b", self.disk.resolve(), scratch_disk,
             *size])
        if any(nic.forward_ssh_to for nic in self.nics):
            self.ssh_port = free_port()
        command = self.command()
        log.say(f"starting QEMU for {self.name} ({self.accel}); serial console: {self.console_log}")
        (self.folder / f"{self.name}-qemu.cmd").write_text(" ".join(command) + "\n")
        self.started_at = time.monotonic()
        with (self.folder / f"{self.name}-qemu.log").open("wb") as qemu_log:
            self.process = self._owner.enter_context(spawn(command, stdout=subprocess.DEVNULL, stderr=qemu_log))

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def console_tail(self, lines: int = 8) -> str:
        if not self.console_log.is_file():
            return "(no console output)"
        text = self.console_log.read_bytes().decode(errors="replace").replace("\r", "")
        text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())

    def console_contains(self, needle: bytes) -> bool:
        return self.console_log.is_file() and needle in self.console_log.read_bytes()

    def fail(self, message: str) -> SysvmError:
        return SysvmError(f"{self.name}: {message}; console log {self.console_log}; last lines: {self.console_tail()}")

    def wait_for_console(self, needle: bytes, timeout: float) -> float:
        started = time.monotonic()
        while not self.console_contains(needle):
            if not self.running():
                raise self.fail(f"QEMU exited before {needle.decode()!r} appeared")
            if time.monotonic() - started > timeout:
                raise self.fail(f"no {needle.decode()!r} on the console after {timeout:.0f}s")
            time.sleep(1)
        return time.monotonic() - started

    def hand_over_cmdline(self, text: str, timeout: float) -> float:
        """Write /var/cache/cloud/cmdline through the guest agent, as a current KVM host does."""
        started = time.monotonic()
        agent = GuestAgent(self.agent_socket)
        while True:
            if not self.running():
                raise self.fail("QEMU exited before the guest agent answered")
            if time.monotonic() - started > timeout:
                raise self.fail(f"the guest agent did not answer within {timeout:.0f}s")
            if agent.sync():
                break
            time.sleep(2)
        handle = agent.call("guest-file-open", {"path": "/var/cache/cloud/cmdline", "mode": "w"})
        agent.call("guest-file-write", {"handle": handle, "buf-b64": base64.b64encode(text.encode()).decode()})
        agent.call("guest-file-close", {"handle": handle})
        return time.monotonic() - started

    def wait_for_ssh(self, timeout: float, after_login_prompt: float = 90.0) -> float:
        """Wait for sshd's banner; give up early when the console showed a login prompt long ago."""
        started = time.monotonic()
        prompt_seen: float | None = None
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.ssh_port), timeout=5) as connection:
                    connection.settimeout(10)
                    if connection.recv(64).startswith(b"SSH-"):
                        return time.monotonic() - started
            except OSError:
                pass
            if not self.running():
                raise self.fail(f"QEMU exited before sshd answered on {self.guest_ssh_port}")
            if prompt_seen is None and self.console_contains(b"login:"):
                prompt_seen = time.monotonic()
            if prompt_seen is not None and time.monotonic() - prompt_seen > after_login_prompt:
                raise self.fail(f"the VM reached a login prompt but sshd on port {self.guest_ssh_port} of {self.ssh_address} "
                                f"did not answer within {after_login_prompt:.0f}s after it")
            if time.monotonic() - started > timeout:
                raise self.fail(f"sshd on port {self.guest_ssh_port} of {self.ssh_address} did not answer within "
                                f"{timeout:.0f}s")
            time.sleep(2)

    def stop(self) -> None:
        self._owner.close()
        self.scratch_disk.unlink(missing_ok=True)
        self.agent_socket.unlink(missing_ok=True)
        self.monitor_socket.unlink(missing_ok=True)


def monitor_command(socket_path: Path, command: str, arguments: dict[str, object], timeout: float = 30.0) -> object:
    """One QMP command to a running QEMU: greeting, capabilities negotiation, the command; events are skipped."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(str(socket_path))
        lines = connection.makefile("rb")

        def reply() -> dict[str, object]:
            while True:
                line = lines.readline()
                if not line:
                    raise SysvmError(f"QEMU's monitor {socket_path} closed the connection during {command}")
                message = json.loads(line)
                if "return" in message or "error" in message:
                    return message

        if "QMP" not in json.loads(lines.readline() or b"{}"):
            raise SysvmError(f"{socket_path} is not a QEMU monitor (no QMP greeting)")
        for request in ({"execute": "qmp_capabilities"}, {"execute": command, "arguments": arguments}):
            connection.sendall(json.dumps(request).encode() + b"\n")
            answer = reply()
            if "error" in answer:
                raise SysvmError(f"QEMU's monitor refused {request['execute']}: {answer['error']}")
        return answer["return"]


def nic_mac(index: int) -> str:
    """The MAC address of the VM's ethN (what a management server would know as the NIC's address)."""
    return f"52:54:00:12:34:{index + 0x10:02x}"


class GuestAgent:
    """A minimal client of the QEMU guest agent protocol (JSON lines on a UNIX socket)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _exchange(self, request: dict[str, object], timeout: float = 10.0) -> dict[str, object]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout)
            connection.connect(str(self.path))
            connection.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while b"\n" not in data:
                chunk = connection.recv(4096)
                if not chunk:
                    break
                data += chunk
        # guest-sync-delimited answers after a 0xFF byte that marks where fresh output starts.
        line = data.split(b"\xff")[-1].strip().split(b"\n")[0]
        return json.loads(line) if line else {}

    def sync(self) -> bool:
        token = int(time.monotonic() * 1000) % 2**31
        try:
            reply = self._exchange({"execute": "guest-sync-delimited", "arguments": {"id": token}}, timeout=5)
        except (OSError, ValueError):
            return False
        return reply.get("return") == token

    def call(self, command: str, arguments: dict[str, object]) -> object:
        reply = self._exchange({"execute": command, "arguments": arguments})
        if "error" in reply:
            raise SysvmError(f"guest agent {command} failed: {reply['error']}")
        return reply.get("return")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
