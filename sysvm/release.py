"""`sysvm release OUT DIR...`: one publishable release folder from release folders built on several machines
(one per architecture, say), as upstream's download site has it.

Every input folder must be of the same CloudStack version and configuration (its build report's settings,
the architecture aside), of a different architecture, and every artifact must match its folder's checksum
lists (and their signatures, when there are any). OUT gets every artifact, merged `md5sum.txt` and
`sha512sum.txt` checked again against the copies, one `metadata.ini` with every folder's sections, one
`packages.txt`, one SPDX document holding each folder's (each element named with its architecture), and a
`build-report.json` that holds the folders' reports by architecture. OUT appears whole or not at all.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from sysvm import metadata, sbom
from sysvm.errors import SysvmError
from sysvm.fsutil import atomic_path
from sysvm.seed import expected_digests, verify_checksum
from sysvm.signing import CHECKSUM_FILES
from sysvm.stage import changes

REPORT = "build-report.json"
PACKAGES = "packages.txt"


@dataclass(frozen=True)
class Folder:
    path: Path
    report: dict[str, object]
    architecture: str  # CloudStack's name, from the artifacts' metadata (x86_64, aarch64)

    @property
    def artifacts(self) -> list[str]:
        return sorted(self.report["artifacts"])  # type: ignore[arg-type]


def read_folder(path: Path) -> Folder:
    report_path = path / REPORT
    if not report_path.is_file():
        raise SysvmError(f"{path}: not a release folder (no {REPORT})")
    try:
        report = json.loads(report_path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise SysvmError(f"{report_path}: not a build report ({error})") from None
    if not isinstance(report, dict) or not isinstance(report.get("artifacts"), dict) or not report["artifacts"]:
        raise SysvmError(f"{report_path}: not a build report (no artifacts)")
    names = set(report["artifacts"])
    # systemvmtemplate-<version>-<arch>-<hypervisor>.<ext>: the architecture is the name's last but one part
    architectures = {name.split("-")[-2] for name in names if name.count("-") >= 2}
    if len(architectures) != 1:
        raise SysvmError(f"{report_path}: its artifacts name no single architecture ({', '.join(sorted(names))})")
    return Folder(path, report, architectures.pop())


def _settings(folder: Folder) -> dict[str, object]:
    """The folder's settings without its architecture: what must be the same across a release."""
    settings = json.loads(json.dumps(folder.report.get("inputs", {})))
    settings.get("debian", {}).pop("architecture", None)
    return settings


def check_folders(folders: list[Folder]) -> None:
    first = folders[0]
    seen: dict[str, Path] = {}
    for folder in folders:
        if folder.report.get("cloudstack_version") != first.report.get("cloudstack_version"):
            raise SysvmError(f"{folder.path}: CloudStack {folder.report.get('cloudstack_version')}, but {first.path} "
                             f"is {first.report.get('cloudstack_version')}: a release is of one version")
        if differences := changes(_settings(first), _settings(folder)):
            raise SysvmError(f"{folder.path}: built with other settings than {first.path} "
                             f"({', '.join(differences[:3])})")
        if folder.architecture in seen:
            raise SysvmError(f"{folder.path} and {seen[folder.architecture]}: both {folder.architecture}")
        seen[folder.architecture] = folder.path
        for name in folder.artifacts:
            artifact = folder.path / name
            if not artifact.is_file():
                raise SysvmError(f"{artifact}: listed in {folder.path / REPORT} but missing")
            digests = expected_digests(artifact, None)  # the lists' signatures are checked here too
            if len(digests) < len(CHECKSUM_FILES):
                raise SysvmError(f"{artifact}: not in both {' and '.join(CHECKSUM_FILES.values())}")
            verify_checksum(artifact, str(artifact), digests)


def merge_metadata(folders: list[Folder]) -> str | None:
    """One metadata.ini holding every folder's sections, each hypervisor's together; a section two folders
    fill differently (4.20.0's single [kvm] for two architectures) stops the release."""
    files = [folder.path / metadata.FILE_NAME for folder in folders]
    present = [path for path in files if path.is_file()]
    if not present:
        return None
    if len(present) != len(files):
        raise SysvmError(f"{', '.join(str(p) for p in files if not p.is_file())}: missing, while "
                         f"{present[0]} has one")
    sections: dict[str, dict[str, str]] = {}
    order: list[str] = []
    for path in present:
        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(path.read_text())
        for name in parser.sections():
            values = dict(parser[name])
            known = sections.get(name)
            if known is None:
                family = [index for index, other in enumerate(order) if other.split("-")[0] == name.split("-")[0]]
                order.insert(family[-1] + 1 if family else len(order), name)
                sections[name] = values
            elif known != values:
                if not known.get("checksum"):  # a section written for a template that folder did not build
                    sections[name] = values
                elif values.get("checksum"):
                    raise SysvmError(f"{path}: [{name}] differs from another folder's (CloudStack "
                                     f"{folders[0].report.get('cloudstack_version')}'s metadata.ini has one "
                                     f"[{name}] for every architecture)")
    return "\n" + "".join(f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in sections[name].items())
                          + "\n" for name in order)


def merge_sbom(folders: list[Folder], release_name: str, sha512s: list[str]) -> dict[str, object]:
    """One SPDX document with every folder's packages, files and relationships, each id suffixed with its
    folder's architecture (the same Debian package is in each architecture's image)."""
    merged: dict[str, object] = {}
    packages: list[object] = []
    files: list[object] = []
    relationships: list[object] = []
    licenses: dict[str, object] = {}
    for folder in folders:
        document = json.loads((folder.path / sbom.FILE_NAME).read_text())

        def renamed(element: str, arch: str = folder.architecture) -> str:
            return element if element == "SPDXRef-DOCUMENT" else f"{element}-{sbom.id_part(arch)}"

        merged = merged or {key: document[key] for key in ("spdxVersion", "dataLicense", "SPDXID", "creationInfo")}
        for package in document.get("packages", []):
            packages.append({**package, "SPDXID": renamed(package["SPDXID"]),
                             **({"hasFiles": [renamed(f) for f in package["hasFiles"]]} if "hasFiles" in package else {})})
        files += [{**entry, "SPDXID": renamed(entry["SPDXID"])} for entry in document.get("files", [])]
        relationships += [{**relation, "spdxElementId": renamed(relation["spdxElementId"]),
                           "relatedSpdxElement": renamed(relation["relatedSpdxElement"])}
                          for relation in document.get("relationships", [])]
        licenses.update({entry["licenseId"]: entry for entry in document.get("hasExtractedLicensingInfos", [])})
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, "".join(sorted(sha512s)))  # the same artifacts, the same id
    merged.update({"name": release_name, "documentNamespace": f"urn:uuid:{namespace}",
                   "packages": packages, "files": files, "relationships": relationships,
                   "hasExtractedLicensingInfos": list(licenses.values())})
    return merged


def _copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # same file system: no second copy of a gigabyte
    except OSError:
        shutil.copy2(source, target)


def release(out: Path, inputs: list[Path]) -> Path:
    if not inputs:
        raise SysvmError("release: name the release folders to assemble (sysvm release OUT DIR...)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SysvmError(f"{out}: exists and is not an empty folder; a release is assembled into a new one")
    for path in inputs:
        if not path.is_dir():
            raise SysvmError(f"{path}: no such release folder")
    folders = [read_folder(path) for path in inputs]
    check_folders(folders)
    version = str(folders[0].report.get("cloudstack_version"))
    ini = merge_metadata(folders)
    if out.is_dir():
        out.rmdir()
    with atomic_path(out) as staging:
        staging.mkdir()
        listed: dict[str, dict[str, str]] = {}
        for folder in folders:
            for name in folder.artifacts:
                _copy(folder.path / name, staging / name)
                info = folder.report["artifacts"][name]  # type: ignore[index]
                listed[name] = {algorithm: info[algorithm] for algorithm in CHECKSUM_FILES}
        for algorithm, listing in CHECKSUM_FILES.items():
            (staging / listing).write_text("".join(f"{digests[algorithm]}  {name}\n"
                                                   for name, digests in sorted(listed.items())))
        for name in listed:  # the copies against the merged lists, as a downloader will check them
            copy = staging / name
            verify_checksum(copy, str(copy), expected_digests(copy, None))
        if ini is not None:
            (staging / metadata.FILE_NAME).write_text(ini)
        lines = sorted({line for folder in folders for line in (folder.path / PACKAGES).read_text().splitlines()})
        (staging / PACKAGES).write_text("".join(f"{line}\n" for line in lines))
        document = merge_sbom(folders, f"systemvmtemplate-{version}", [d["sha512"] for d in listed.values()])
        (staging / sbom.FILE_NAME).write_text(json.dumps(document, indent=1) + "\n")
        report = {"cloudstack_version": version, "architectures": {folder.architecture: str(folder.path)
                                                                   for folder in folders},
                  "artifacts": {name: {**digests, "size": (staging / name).stat().st_size}
                                for name, digests in sorted(listed.items())},
                  "sbom_sha256": hashlib.sha256((staging / sbom.FILE_NAME).read_bytes()).hexdigest(),
                  "reports": {folder.architecture: folder.report for folder in folders}}
        (staging / REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return out
