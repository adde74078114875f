"""export stage: one artifact per hypervisor with upstream names, checksums, packages and a build report."""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sysvm import log
from sysvm.cache import stage_key
from sysvm.cloudstack import locate
from sysvm.config import Config
from sysvm.fsutil import atomic_write, hash_file, remove_tree, scratch_dir
from sysvm.overlay import FinalImage
from sysvm.ovf import write_ova
from sysvm.render import Overlay
from sysvm.rootfs import Rootfs
from sysvm.run import output, run
from sysvm.workspace import Workspace

EXTENSIONS = {"kvm": "qcow2.bz2", "xen": "vhd.bz2", "vmware": "ova", "hyperv": "vhd.zip", "ovm": "raw.bz2"}
ARCH_NAMES = {"amd64": "x86_64"}
REPORT = "build-report.json"
CHECKSUM_FILES = {"md5": "md5sum.txt", "sha512": "sha512sum.txt"}
PACKAGES = "packages.txt"


@dataclass(frozen=True)
class Artifacts:
    folder: Path
    files: dict[str, Path]  # hypervisor -> artifact
    report: Path


def artifact_name(config: Config, hypervisor: str) -> str:
    stem = config.export.name_pattern.format(version=config.cloudstack.version, hypervisor=hypervisor,
                                             arch=ARCH_NAMES[config.debian.architecture])
    return f"{stem}.{EXTENSIONS[hypervisor]}"


def virtual_size(image: Path) -> int:
    return int(json.loads(output(["qemu-img", "info", "--output=json", image]))["virtual-size"])


def _compress_bz2(source: Path, destination: Path, threads: int) -> None:
    run(["lbzip2", "-n", str(threads), "-9", "-c", source], stdout_path=destination)


def _source_format(image: Path) -> str:
    return "raw" if image.suffix == ".raw" else "qcow2"


def _convert(source: Path, destination: Path, fmt: str, options: str) -> None:
    run(["qemu-img", "convert", "-f", _source_format(source), "-O", fmt, "-o", options, source, destination])


def _make_artifact(config: Config, hypervisor: str, image: Path, staging: Path, threads: int) -> Path:
    name = artifact_name(config, hypervisor)
    target = staging / name
    work = staging / f"work-{hypervisor}"
    work.mkdir()
    if hypervisor == "kvm":
        # compat=0.10 so that old KVM hosts read the image, as upstream publishes it.
        _convert(image, work / "disk.qcow2", "qcow2", "compat=0.10")
        _compress_bz2(work / "disk.qcow2", target, threads)
    elif hypervisor == "xen":
        _convert(image, work / "disk.vhd", "vpc", "subformat=dynamic,force_size=on")
        _compress_bz2(work / "disk.vhd", target, threads)
    elif hypervisor == "hyperv":
        _convert(image, work / "disk.vhd", "vpc", "subformat=dynamic,force_size=on")
        inner = name.removesuffix(".zip")
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
            archive.write(work / "disk.vhd", arcname=inner)
    elif hypervisor == "vmware":
        _convert(image, work / "disk.vmdk", "vmdk", "subformat=streamOptimized")
        write_ova(target, name.removesuffix(".ova"), work / "disk.vmdk", virtual_size(image))
    else:  # ovm: a raw image
        run(["qemu-img", "convert", "-f", _source_format(image), "-O", "raw", image, work / "disk.raw"])
        _compress_bz2(work / "disk.raw", target, threads)
    remove_tree(work)
    return target


def export_key(config: Config, final: FinalImage) -> str:
    return stage_key("export", final.key, config.export.hypervisors, config.export.name_pattern,
                     config.cloudstack.version, config.debian.architecture)


def _previous(folder: Path) -> dict[str, object]:
    report = folder / REPORT
    try:
        return json.loads(report.read_text())
    except (OSError, ValueError):
        return {}


def tool_versions() -> dict[str, str]:
    commands = {"mmdebstrap": ["mmdebstrap", "--version"], "qemu-img": ["qemu-img", "--version"],
                "packer": ["packer", "version"], "lbzip2": ["lbzip2", "--version"]}
    versions = {}
    for name, command in commands.items():
        text = output(command, check=False)
        versions[name] = text.strip().splitlines()[0] if text.strip() else "unknown"
    return versions


def export(config: Config, final: FinalImage, overlay: Overlay, rootfs: Rootfs, workspace: Workspace,
           durations: dict[str, float], force: bool = False) -> Artifacts:
    key = export_key(config, final)
    folder = workspace.artifacts
    names = {hypervisor: artifact_name(config, hypervisor) for hypervisor in config.export.hypervisors}
    result = Artifacts(folder, {h: folder / n for h, n in names.items()}, folder / REPORT)
    previous = _previous(folder)
    if previous.get("export_key") == key and all(p.is_file() for p in result.files.values()) and not force:
        log.say(f"    export: up to date ({folder})")
        return result
    # An older set must not sit beside a half-made new one looking finished.
    for stale in [*previous.get("artifacts", {}), REPORT, *CHECKSUM_FILES.values(), PACKAGES]:
        (folder / str(stale)).unlink(missing_ok=True)
    started = time.monotonic()
    staging = scratch_dir(folder, ".staging-")
    try:
        jobs = len(names)
        threads = max(1, (os.cpu_count() or 1))
        with log.waiting(f"{jobs} exports ({', '.join(names)})"), ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {h: pool.submit(_make_artifact, config, h, final.image, staging, threads)
                       for h in names}
            made = {h: future.result() for h, future in futures.items()}
        artifacts = {}
        for hypervisor, path in made.items():
            artifacts[path.name] = {"hypervisor": hypervisor, "size": path.stat().st_size,
                                    "md5": hash_file(path, "md5"), "sha512": hash_file(path, "sha512")}
        for algorithm, filename in CHECKSUM_FILES.items():
            (staging / filename).write_text("".join(f"{info[algorithm]}  {name}\n"
                                                    for name, info in sorted(artifacts.items())))
        shutil.copyfile(rootfs.packages, staging / PACKAGES)
        for path in [*made.values(), *(staging / f for f in CHECKSUM_FILES.values()), staging / PACKAGES]:
            os.replace(path, folder / path.name)
    finally:
        remove_tree(staging)
    durations = {**durations, "export": round(time.monotonic() - started, 2)}
    report = {
        "export_key": key,
        "cloudstack_version": config.cloudstack.version,
        "inputs": config.as_dict(),
        "stage_keys": {"rootfs": rootfs.key, "overlay": final.key},
        "scripts_signature": overlay.signature(),
        "cloudstack_scripts": ({"path": str(locate(config.cloudstack.scripts).root), "sha512": overlay.signature()}
                               if overlay.baked_scripts else None),
        "tools": tool_versions(),
        "durations_s": durations,
        "virtual_size": virtual_size(final.image),
        "packages": len(rootfs.packages.read_text().splitlines()),
        "artifacts": artifacts,
    }
    atomic_write(result.report, json.dumps(report, indent=2, sort_keys=True) + "\n")
    for name, info in sorted(artifacts.items()):
        log.say(f"    {name}: {info['size'] / 2**20:.1f} MiB")
    return result
