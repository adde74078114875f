"""export stage: one artifact per hypervisor with upstream names, checksums, packages and a build report."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sysvm import log, metadata, ovf, pieces, sbom, signing
from sysvm.cli import version
from sysvm.cloudstack import locate
from sysvm.config import Config
from sysvm.errors import SysvmError
from sysvm.fsutil import atomic_write, hash_file, remove_tree, scratch_dir
from sysvm.hypervisors import ARTIFACTS
from sysvm.overlay import FinalImage
from sysvm.ovf import write_ova
from sysvm.process import output, run
from sysvm.render import RenderedTree
from sysvm.rootfs import Rootfs
from sysvm.signing import CHECKSUM_FILES
from sysvm.stage import as_recorded, key_of, reason
from sysvm.workspace import Workspace

REPORT = "build-report.json"
PACKAGES = "packages.txt"


@dataclass(frozen=True)
class Artifacts:
    folder: Path
    files: dict[str, Path]  # hypervisor -> artifact
    report: Path
    sbom: Path
    metadata: Path | None = None  # metadata.ini, when cloudstack.version has a known layout


def name_pattern(config: Config) -> str:
    return config.export.name_pattern_for(config.cloudstack.version)


def artifact_name(config: Config, hypervisor: str) -> str:
    stem = name_pattern(config).format(version=config.cloudstack.version, hypervisor=hypervisor,
                                       arch=config.arch.cloudstack_name)
    return f"{stem}.{ARTIFACTS[hypervisor].extension}"


def render_metadata(config: Config, artifacts: dict[str, dict[str, object]]) -> metadata.Metadata | None:
    """metadata.ini for artifacts as listed in build-report.json (file name -> hypervisor, md5, sha512)."""
    digests = {str(info["hypervisor"]): {"md5": str(info["md5"]), "sha512": str(info["sha512"])}
               for info in artifacts.values()}
    # Every hypervisor's name, built or not: some layouts list templates that were not built.
    names = {hypervisor: artifact_name(config, hypervisor) for hypervisor in ARTIFACTS}
    return metadata.render(config, names, digests)


def qemu_virtual_size(image: Path) -> int:
    return int(json.loads(output(["qemu-img", "info", "--output=json", image]))["virtual-size"])


def _compress_bz2(source: Path, destination: Path, threads: int, cache: Path) -> None:
    log.step("compressing (lbzip2, in pieces)")
    with destination.open("wb") as out:
        pieces.compress(source, out, pieces.BZIP2, cache, threads)


def _source_format(image: Path) -> str:
    return "raw" if image.suffix == ".raw" else "qcow2"


def _convert(source: Path, destination: Path, fmt: str, options: str) -> None:
    log.step(f"converting to {fmt}")
    run(["qemu-img", "convert", "-f", _source_format(source), "-O", fmt, *(["-o", options] if options else []),
         source, destination])


@dataclass(frozen=True)
class Stamp:
    """What VHD, VMDK and zip record about their own making, taken from the exported image instead of the
    clock and a random source: the same image then always gives byte-identical artifacts, so a rebuild (an
    interrupted export or overlay stage redone, say) can be checked against an earlier build by sha512."""

    time: int  # the image file's modification time; the overlay stage sets it to the provisioned disk's
    key: str  # the overlay stage key

    @classmethod
    def of(cls, final: FinalImage) -> Stamp:
        return cls(int(final.image.stat().st_mtime), final.key)

    def uuid(self, hypervisor: str) -> uuid.UUID:
        return uuid.uuid5(uuid.NAMESPACE_OID, f"sysvm:{self.key}:{self.time}:{hypervisor}")


VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z: VHD counts its time stamps from there
ZIP_EPOCH = 315532800  # 1980-01-01T00:00:00Z: the earliest date a zip entry can hold
ZIP_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
ZIP_CENTRAL_HEADER = struct.Struct("<IHHHHHHIIIHHHHHII")  # made by 0x0314: Unix, zip 2.0, as zipfile writes
ZIP_END = struct.Struct("<IHHHHIIH")
ZIP64_FROM = 0xFFFFFFFF - (256 << 20)  # deflate may grow data a little; below this no size needs zip64
PIECES = "export-pieces"  # under output/cache: compressed pieces by content (sysvm.pieces)


def _stamp_vhd(vhd: Path, stamp: Stamp, hypervisor: str) -> None:
    """qemu-img writes the current time and a random UUID into the footer, which a dynamic VHD holds twice
    (first and last 512 bytes); write the stamp's instead, with the footer's checksum to match."""
    size = vhd.stat().st_size
    with vhd.open("r+b") as handle:
        for offset in (0, size - 512):
            handle.seek(offset)
            footer = bytearray(handle.read(512))
            if footer[:8] != b"conectix":
                raise SysvmError(f"{vhd}: no VHD footer at byte {offset}")
            struct.pack_into(">I", footer, 24, max(0, stamp.time - VHD_EPOCH))
            footer[68:84] = stamp.uuid(hypervisor).bytes
            footer[64:68] = bytes(4)
            struct.pack_into(">I", footer, 64, ~sum(footer) & 0xFFFFFFFF)
            handle.seek(offset)
            handle.write(footer)


def _stamp_vmdk(vmdk: Path, stamp: Stamp, hypervisor: str) -> None:
    """qemu-img gives a new VMDK a random content id (CID=, 1 to 8 hex digits) in its text descriptor, which
    sits in a fixed, zero-padded area; write the stamp's, always 8 digits, and pad again."""
    with vmdk.open("r+b") as handle:
        header = handle.read(512)
        if header[:4] != b"KDMV":
            raise SysvmError(f"{vmdk}: not a sparse VMDK")
        sector, sectors = struct.unpack_from("<QQ", header, 28)  # the descriptor's place and length
        handle.seek(sector * 512)
        area = handle.read(sectors * 512)
        text, count = re.subn(rb"^CID=[0-9a-f]{1,8}$", b"CID=" + stamp.uuid(hypervisor).hex[:8].encode(),
                              area.rstrip(b"\0"), count=1, flags=re.MULTILINE)
        if count != 1 or len(text) >= len(area):
            raise SysvmError(f"{vmdk}: no CID in the descriptor")
        handle.seek(sector * 512)
        handle.write(text.ljust(len(area), b"\0"))


def _dos_time(stamp: Stamp) -> tuple[int, int]:
    """A zip entry's time and date fields: the stamp's, not the file's (it was made just now)."""
    year, month, day, hour, minute, second = time.gmtime(max(stamp.time, ZIP_EPOCH))[:6]
    return (hour << 11) | (minute << 5) | (second // 2), ((year - 1980) << 9) | (month << 5) | day


def _zip(source: Path, target: Path, inner: str, stamp: Stamp, threads: int, cache: Path) -> None:
    """One deflated entry, its data made of cached pieces; a disk too big for a zip without zip64
    extensions is zipped whole by zipfile instead."""
    if source.stat().st_size >= ZIP64_FROM:
        entry = zipfile.ZipInfo(inner, time.gmtime(max(stamp.time, ZIP_EPOCH))[:6])
        entry.external_attr = 0o644 << 16  # not the file's mode: that depends on the umask
        entry.compress_type, entry.file_size = zipfile.ZIP_DEFLATED, source.stat().st_size  # zlib's level 6
        with zipfile.ZipFile(target, "w") as archive, source.open("rb") as data, archive.open(entry, "w") as member:
            shutil.copyfileobj(data, member, 1 << 20)
        return
    name = inner.encode("ascii")
    with target.open("wb") as out:
        out.write(bytes(ZIP_LOCAL_HEADER.size + len(name)))  # the local header, once the sizes are known
        done = pieces.compress(source, out, pieces.DEFLATE, cache, threads, crc=True)
        directory_at = out.tell()
        # version needed 2.0, no flags, deflate, time, date, CRC-32, compressed and uncompressed sizes
        fields = (20, 0, zipfile.ZIP_DEFLATED, *_dos_time(stamp), done.crc32, done.compressed_size, done.size)
        central = ZIP_CENTRAL_HEADER.pack(0x02014B50, 0x0314, *fields, len(name), 0, 0, 0, 0, 0o644 << 16, 0) + name
        out.write(central)
        out.write(ZIP_END.pack(0x06054B50, 0, 0, 1, 1, len(central), directory_at, 0))
        out.seek(0)
        out.write(ZIP_LOCAL_HEADER.pack(0x04034B50, *fields, len(name), 0) + name)


def _make_artifact(config: Config, hypervisor: str, image: Path, staging: Path, threads: int,
                   stamp: Stamp, cache: Path) -> Path:
    made = ARTIFACTS[hypervisor]
    name = artifact_name(config, hypervisor)
    target = staging / name
    work = staging / f"work-{hypervisor}"
    work.mkdir()
    disk = work / f"disk.{made.disk_extension}"
    _convert(image, disk, made.disk_format, made.convert_options)
    # What the formats record about their own making comes from the image, not the clock or chance.
    if made.disk_format == "vpc":
        _stamp_vhd(disk, stamp, hypervisor)
    elif made.disk_format == "vmdk":
        _stamp_vmdk(disk, stamp, hypervisor)
    if made.packing == "bz2":
        _compress_bz2(disk, target, threads, cache)
    elif made.packing == "zip":
        log.step("compressing (zip, in pieces)")
        _zip(disk, target, name.removesuffix(".zip"), stamp, threads, cache)
    else:
        log.step("writing the OVA")
        write_ova(target, name.removesuffix(".ova"), disk, qemu_virtual_size(image),
                  config.export.vmware_hardware_version)
    remove_tree(work)
    return target


def _artifact_with_checksums(config: Config, hypervisor: str, image: Path, staging: Path, threads: int,
                             stamp: Stamp, cache: Path) -> tuple[Path, dict[str, object]]:
    """One export job: the artifact and its build-report.json entry (checksums in the job, so in parallel)."""
    path = _make_artifact(config, hypervisor, image, staging, threads, stamp, cache)
    log.step("checksums")
    return path, {"hypervisor": hypervisor, "size": path.stat().st_size,
                  "md5": hash_file(path, "md5"), "sha512": hash_file(path, "sha512")}


def code_digest() -> str:
    """The code that makes the release folder (this module, the pieces, the OVA, the SBOM): a change to it
    makes the folder again."""
    digest = hashlib.sha256()
    for source in (__file__, pieces.__file__, ovf.__file__, sbom.__file__):
        digest.update(Path(str(source)).read_bytes())
    return digest.hexdigest()[:16]


def export_inputs(config: Config, final: FinalImage) -> dict[str, object]:
    # metadata.ini is left out: it is rewritten from the report's checksums without remaking artifacts.
    return {"overlay": final.key, "code": code_digest(), "export.hypervisors": config.hypervisors,
            "export.name_pattern": name_pattern(config),
            "export.vmware_hardware_version": config.export.vmware_hardware_version,
            "cloudstack.version": config.cloudstack.version, "debian.architecture": config.debian.architecture,
            "export.signing_key": config.export.signing_key}


def _refresh_metadata(config: Config, folder: Path, report: dict[str, object]) -> None:
    """Bring metadata.ini and its report entry up to date with settings that do not change an artifact."""
    listed = report.get("artifacts")
    made = render_metadata(config, listed if isinstance(listed, dict) else {})
    path = folder / metadata.FILE_NAME
    current = path.read_text() if path.is_file() else None
    entry = made.report() if made is not None else None
    if current == (made.text if made is not None else None) and report.get("metadata") == entry:
        return
    if made is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write(path, made.text)
    atomic_write(folder / REPORT, json.dumps({**report, "inputs": config.as_dict(), "metadata": entry},
                                             indent=2, sort_keys=True) + "\n")
    log.say(f"export: {metadata.FILE_NAME} {'rewritten' if made is not None else 'removed'}")


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


def export(config: Config, final: FinalImage, rendered: RenderedTree, rootfs: Rootfs, workspace: Workspace,
           durations: dict[str, float], force: bool = False) -> Artifacts:
    inputs = as_recorded(export_inputs(config, final))
    key = key_of("export", inputs)
    folder = workspace.artifacts
    names = {hypervisor: artifact_name(config, hypervisor) for hypervisor in config.hypervisors}
    meta_path = folder / metadata.FILE_NAME
    result = Artifacts(folder, {h: folder / n for h, n in names.items()}, folder / REPORT, folder / sbom.FILE_NAME,
                       meta_path if config.export.metadata_format_for(config.cloudstack.version) else None)
    previous = _previous(folder)
    signatures = [signing.signature_of(Path(name)).name for name in CHECKSUM_FILES.values()]
    missing = [path.name for path in (*result.files.values(), result.sbom,
                                      *(folder / name for name in signatures if config.export.signing_key))
               if not path.is_file()]
    if previous.get("export_key") == key and not missing and not force:
        log.say(f"export: up to date ({folder})")
        _refresh_metadata(config, folder, previous)
        return result
    recorded = previous.get("export_inputs")
    log.say(f"export: {reason(recorded if isinstance(recorded, dict) else None, inputs, force, missing)}")
    # An older set must not sit beside a half-made new one looking finished.
    for stale in [*previous.get("artifacts", {}), REPORT, *CHECKSUM_FILES.values(), *signatures, PACKAGES,
                  metadata.FILE_NAME, sbom.FILE_NAME]:
        (folder / str(stale)).unlink(missing_ok=True)
    started = time.monotonic()
    staging = scratch_dir(folder, ".staging-")
    try:
        jobs = len(names)
        threads = max(1, (os.cpu_count() or 1))
        stamp = Stamp.of(final)
        cache = workspace.cache / PIECES
        if removed := pieces.prune(cache):
            log.say(f"export: removed {removed} pieces no export used for {pieces.CACHE_DAYS} days from {cache}")
        with log.parallel(jobs) as pool:
            futures = [pool.submit(h, _artifact_with_checksums, config, h, final.image, staging, threads, stamp,
                                   cache) for h in names]
            made = dict(future.result() for future in futures)
        artifacts = {path.name: info for path, info in made.items()}
        for algorithm, filename in CHECKSUM_FILES.items():
            (staging / filename).write_text("".join(f"{info[algorithm]}  {name}\n"
                                                    for name, info in sorted(artifacts.items())))
        listing = [staging / f for f in CHECKSUM_FILES.values()]
        signer = None
        if config.export.signing_key:
            log.say(f"export: signing {', '.join(CHECKSUM_FILES.values())} with {config.export.signing_key}")
            signer = signing.sign(listing, config.export.signing_key)
            listing += [signing.signature_of(path) for path in listing]
        meta = render_metadata(config, artifacts)
        if meta is not None:
            (staging / metadata.FILE_NAME).write_text(meta.text)
            listing.append(staging / metadata.FILE_NAME)
        shutil.copyfile(rootfs.packages, staging / PACKAGES)
        log.say(f"export: writing {sbom.FILE_NAME}")
        in_sbom = sbom.write(staging / sbom.FILE_NAME, config, rootfs.tarball, rendered, artifacts, stamp.time,
                             version())
        for path in [*made, *listing, staging / PACKAGES, staging / sbom.FILE_NAME]:
            os.replace(path, folder / path.name)
    finally:
        remove_tree(staging)
    durations = {**durations, "export": round(time.monotonic() - started, 2)}
    report = {
        "export_key": key,
        "export_inputs": inputs,  # what the key was made from: the next export says which of them changed
        "cloudstack_version": config.cloudstack.version,
        "name_pattern": name_pattern(config),
        "inputs": config.as_dict(),
        "stage_keys": {"rootfs": rootfs.key, "overlay": final.key},
        "scripts_signature": rendered.signature(),
        "cloudstack_scripts": ({"path": str(locate(config.cloudstack.scripts).root), "sha512": rendered.signature()}
                               if rendered.baked_scripts else None),
        "tools": tool_versions(),
        "durations_s": durations,
        "virtual_size": qemu_virtual_size(final.image),
        "packages": len(rootfs.packages.read_text().splitlines()),
        "debian_suites": rootfs.suites, "without_security": rootfs.without_security,
        "artifacts": artifacts,
        "metadata": meta.report() if meta is not None else None,
        "sbom": {"file": sbom.FILE_NAME, "format": "SPDX-2.3", "packages": in_sbom},
        "signatures": {"key": signer, "files": signatures} if signer else None,
    }
    atomic_write(result.report, json.dumps(report, indent=2, sort_keys=True) + "\n")
    for name, info in sorted(artifacts.items()):
        log.say(f"{name}: {info['size'] / 2**20:.1f} MiB")
    return result
