"""Booting images in QEMU: the KVM probe, and a VM handle with a logged serial console and a hard timeout."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from sysvm import log
from sysvm.fsutil import atomic_write

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
        log.say(f"    no kernel at {kernel} to probe KVM with: using TCG")
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
    log.say(f"    probing KVM (up to {PROBE_TIMEOUT_S:.0f}s)")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    works = False
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        if console.is_file() and PROBE_MESSAGE in console.read_bytes():
            works = True
            break
        time.sleep(0.5)
    process.kill()
    process.wait()
    atomic_write(record, json.dumps({"boot_id": boot_id, "kvm": works}))
    log.say(f"    KVM {'works' if works else 'does not work here: using TCG (software emulation)'}")
    return works


def accelerator(setting: str, cache_dir: Path) -> str:
    """'kvm' or 'tcg' for a setting of auto, kvm or tcg."""
    if setting == "auto":
        return "kvm" if probe_kvm(cache_dir) else "tcg"
    return setting
