"""The release folder's SBOM, SPDX 2.3 JSON: every package of the image from its dpkg database, the files
sysvm adds (the rendered tree), and each artifact with its checksums, which CONTAINS both.

Everything is read from the rootfs tarball, so the SBOM needs no mount and no boot. Licenses come from
the machine-readable (DEP-5) copyright files the image keeps; a package whose copyright file is missing
or free text gets NOASSERTION. Debian's short license names become SPDX ids where the meaning is plain
and LicenseRef-<copyright folder>-<name> otherwise, with the text the copyright file gives for it.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import tarfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from sysvm.config import Config
from sysvm.errors import SysvmError
from sysvm.render import RenderedTree

FILE_NAME = "sbom.spdx.json"
STATUS = "var/lib/dpkg/status"
DOC = "usr/share/doc"
NOASSERTION = "NOASSERTION"

# Debian's short names (copyright-format 1.0 and common use) whose SPDX id is unambiguous, lower case.
# The GNU families are read by pattern (VERSIONED below); a name in neither becomes a LicenseRef.
SPDX_IDS = {
    "apache-2": "Apache-2.0", "apache-2.0": "Apache-2.0", "artistic": "Artistic-1.0-Perl",
    "artistic-2": "Artistic-2.0", "artistic-2.0": "Artistic-2.0", "afl-2.1": "AFL-2.1", "apsl-2.0": "APSL-2.0",
    "beerware": "Beerware", "bsd-2-clause": "BSD-2-Clause", "bsd-3-clause": "BSD-3-Clause",
    "bsd-4-clause": "BSD-4-Clause", "bsd-4-clause-uc": "BSD-4-Clause-UC", "0bsd": "0BSD",
    "bsl-1.0": "BSL-1.0", "bzip2-1.0.6": "bzip2-1.0.6", "cc0": "CC0-1.0", "cc0-1.0": "CC0-1.0",
    "cc-by-3.0": "CC-BY-3.0", "cc-by-4.0": "CC-BY-4.0", "cc-by-sa-3.0": "CC-BY-SA-3.0",
    "cc-by-sa-4.0": "CC-BY-SA-4.0", "curl": "curl", "epl-1.0": "EPL-1.0", "epl-2.0": "EPL-2.0",
    "expat": "MIT", "mit": "MIT", "mit-0": "MIT-0", "mit-cmu": "MIT-CMU", "fsfap": "FSFAP", "fsful": "FSFUL",
    "fsfullr": "FSFULLR", "ftl": "FTL", "isc": "ISC", "libpng": "Libpng", "mpl-1.1": "MPL-1.1",
    "mpl-2.0": "MPL-2.0", "ntp": "NTP", "oldap-2.8": "OLDAP-2.8", "openldap-2.8": "OLDAP-2.8",
    "openssl": "OpenSSL", "postgresql": "PostgreSQL", "psf-2.0": "PSF-2.0", "sleepycat": "Sleepycat",
    "unicode-dfs-2016": "Unicode-DFS-2016", "unlicense": "Unlicense", "vim": "Vim", "wtfpl": "WTFPL",
    "x11": "X11", "zlib": "Zlib", "zpl-2.1": "ZPL-2.1",
}
VERSIONED = re.compile(r"(a?gpl|lgpl|gfdl)-([0-9])(?:\.([0-9]))?(\+|-only|-or-later)?", re.IGNORECASE)
# "<license> with <name> exception": SPDX's exception ids; Autoconf's depends on the GPL's version.
EXCEPTIONS = {"bison": "Bison-exception-2.2", "libtool": "Libtool-exception", "llvm": "LLVM-exception",
              "linux-syscall-note": "Linux-syscall-note"}
AUTOCONF = {"2": "Autoconf-exception-2.0", "3": "Autoconf-exception-3.0"}
WITH_EXCEPTION = re.compile(r"(.+?)\s+with\s+(.+?)\s+exception", re.IGNORECASE)


@dataclass(frozen=True)
class DebPackage:
    """One installed package, as its dpkg status entry and its copyright file describe it."""

    name: str
    version: str
    architecture: str
    source: str
    source_version: str
    homepage: str
    license: str  # an SPDX license expression, or NOASSERTION

    def purl(self, release: str) -> str:
        version = quote(self.version, safe="")
        return f"pkg:deb/debian/{self.name}@{version}?arch={self.architecture}&distro=debian-{release}"

    @property
    def spdx_id(self) -> str:
        return f"SPDXRef-deb-{id_part(self.name)}-{id_part(self.architecture)}"


@dataclass(frozen=True)
class Inventory:
    """What the image holds, read from its rootfs: packages, and the texts of the LicenseRefs they name."""

    packages: list[DebPackage]
    license_texts: dict[str, str]  # LicenseRef-... -> its text


def id_part(text: str) -> str:
    """SPDX ids allow letters, digits, '.' and '-': anything else (the '+' of libstdc++6) as .XX."""
    return re.sub(r"[^A-Za-z0-9.-]", lambda match: f".{ord(match.group()):02X}", text)


def paragraphs(text: str) -> list[dict[str, str]]:
    """deb822 paragraphs (dpkg's status, DEP-5 copyright): field names lower case, continuation lines kept."""
    found: list[dict[str, str]] = []
    current: dict[str, str] = {}
    field = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                found.append(current)
            current, field = {}, ""
        elif line[0] in " \t":
            if field:
                current[field] += "\n" + line[1:]
        elif ":" in line:
            name, value = line.split(":", 1)
            field = name.strip().lower()
            current[field] = value.strip()
    if current:
        found.append(current)
    return found


def spdx_term(name: str) -> str | None:
    """The SPDX id of one Debian license name, or None where it has none that means the same."""
    if known := SPDX_IDS.get(name.lower()):
        return known
    versioned = VERSIONED.fullmatch(name)
    if versioned is None:
        return None
    family, major, minor, suffix = versioned.groups()
    if family.lower() == "gfdl" and major != "1":
        return None
    later = suffix in ("+", "-or-later")
    return f"{family.upper()}-{major}.{minor or '0'}-{'or-later' if later else 'only'}"


class Licenses:
    """The SPDX expressions of one copyright file's License fields, and the LicenseRefs they needed."""

    def __init__(self, folder: str, texts: dict[str, str]) -> None:
        self.folder = folder  # the doc folder the copyright file is in: LicenseRef names are per file
        self.texts = texts  # short name -> license text, from the file's paragraphs that give one
        self.refs: dict[str, str] = {}

    def _ref(self, term: str) -> str:
        ref = f"LicenseRef-{id_part(self.folder)}-{re.sub(r'[^A-Za-z0-9.]+', '-', term).strip('-')}"
        self.refs[ref] = self.texts.get(term) or (f"The license named '{term}' in /{DOC}/{self.folder}/copyright,"
                                                  " which gives no text for it.")
        return ref

    def _term(self, term: str) -> str:
        if known := spdx_term(term):
            return known
        if exception := WITH_EXCEPTION.fullmatch(term):
            base, name = spdx_term(exception.group(1)), exception.group(2).lower()
            gpl = re.fullmatch(r"GPL-([0-9])\.0-.*", base or "")
            spdx_exception = EXCEPTIONS.get(name) or (AUTOCONF.get(gpl.group(1)) if gpl and name == "autoconf"
                                                      else None)
            if base and spdx_exception:
                return f"{base} WITH {spdx_exception}"
        return self._ref(term)

    def expression(self, field: str) -> str | None:
        """'GPL-1+ or Artistic, and Unicode' as '(GPL-1.0-or-later OR Artistic-1.0-Perl) AND LicenseRef-…'.
        A comma binds loosest (copyright-format 1.0); within a group SPDX's own precedence applies."""
        groups = []
        for group in re.split(r",\s*(?:and\s+)?", field.strip()):
            parts = re.split(r"\s+(and|or)\s+", group.strip(), flags=re.IGNORECASE)
            terms = [self._term(part) if index % 2 == 0 else part.upper()
                     for index, part in enumerate(parts) if part]
            if terms:
                groups.append(" ".join(terms))
        if not groups:
            return None
        return _all_of(groups)


def _all_of(expressions: list[str]) -> str:
    """expressions joined by AND, each with an OR in it in parentheses (AND binds tighter in SPDX)."""
    if len(expressions) == 1:
        return expressions[0]
    return " AND ".join(f"({made})" if " OR " in made else made for made in expressions)


def license_of(folder: str, copyright_text: str | None) -> tuple[str, dict[str, str]]:
    """A package's declared license from its copyright file, and the LicenseRefs it uses."""
    if copyright_text is None:
        return NOASSERTION, {}
    found = paragraphs(copyright_text)
    if not found or "copyright-format" not in found[0].get("format", ""):
        return NOASSERTION, {}
    texts = {}
    for paragraph in found:
        synopsis, _, text = paragraph.get("license", "").partition("\n")
        if synopsis and text.strip():
            texts[synopsis.strip()] = text
    licenses = Licenses(folder, texts)
    expressions: list[str] = []
    for paragraph in found:
        if "license" not in paragraph or ("files" not in paragraph and paragraph is not found[0]):
            continue  # a stand-alone License paragraph only gives a text
        made = licenses.expression(paragraph["license"].partition("\n")[0])
        if made and made not in expressions:
            expressions.append(made)
    if not expressions:
        return NOASSERTION, {}
    return _all_of(expressions), licenses.refs


class _Tree:
    """The entries of a rootfs tarball that the SBOM reads: dpkg's status and the copyright files."""

    def __init__(self, tarball: Path) -> None:
        self.files: dict[str, bytes] = {}
        self.links: dict[str, str] = {}  # path -> the path it points to, both relative to /
        try:
            with tarfile.open(tarball) as archive:
                for member in archive:
                    path = posixpath.normpath(member.name.removeprefix("./").lstrip("/"))
                    if not (path == STATUS or path.startswith(DOC + "/")):
                        continue
                    if member.issym():
                        target = member.linkname
                        self.links[path] = posixpath.normpath(
                            target.lstrip("/") if target.startswith("/")
                            else posixpath.join(posixpath.dirname(path), target))
                    elif member.islnk():
                        self.links[path] = posixpath.normpath(member.linkname.removeprefix("./").lstrip("/"))
                    elif member.isfile() and (path == STATUS or posixpath.basename(path) == "copyright"):
                        extracted = archive.extractfile(member)
                        if extracted is not None:
                            self.files[path] = extracted.read()
        except (OSError, tarfile.TarError) as error:
            raise SysvmError(f"sbom: cannot read {tarball}: {error}") from error

    def resolve(self, path: str) -> str:
        """path with links followed in its folders and at its end (a few hops: links in the image may loop)."""
        for _ in range(8):
            parts = path.split("/")
            for end in range(1, len(parts) + 1):
                head = "/".join(parts[:end])
                if head in self.links:
                    path = posixpath.join(self.links[head], *parts[end:])
                    break
            else:
                return path
        return path

    def text(self, path: str) -> str | None:
        data = self.files.get(self.resolve(path))
        return data.decode("utf-8", errors="replace") if data is not None else None


def inventory(tarball: Path) -> Inventory:
    """Every installed package of the rootfs tarball, with source, homepage and license."""
    tree = _Tree(tarball)
    status = tree.text(STATUS)
    if status is None:
        raise SysvmError(f"sbom: {tarball} has no /{STATUS}: it is not a Debian root file system")
    packages, texts = [], {}
    for entry in paragraphs(status):
        if entry.get("status", "").split()[-1:] != ["installed"]:
            continue  # removed, with only its configuration files left
        name, version = entry["package"], entry.get("version", "")
        source, _, rest = entry.get("source", name).partition(" ")
        copyright_path = tree.resolve(f"{DOC}/{name}/copyright")
        license_expression, refs = license_of(posixpath.basename(posixpath.dirname(copyright_path)),
                                              tree.text(copyright_path))
        texts.update(refs)
        packages.append(DebPackage(name, version, entry.get("architecture", ""), source,
                                   rest.strip("()") or version, entry.get("homepage", ""), license_expression))
    return Inventory(sorted(packages, key=lambda package: (package.name, package.architecture)), texts)


def _layer_files(rendered: RenderedTree) -> tuple[list[dict[str, object]], str]:
    """The rendered tree's files, and SPDX's verification code for them: SHA1 over their sorted SHA1s."""
    files, sha1s = [], []
    for index, entry in enumerate(entry for entry in rendered.entries() if entry["type"] == "file"):
        path = str(entry["path"])
        sha1s.append(hashlib.sha1((rendered.tree / path.lstrip("/")).read_bytes(), usedforsecurity=False).hexdigest())
        files.append({"SPDXID": f"SPDXRef-layer-file-{index}", "fileName": f".{path}",
                      "checksums": [{"algorithm": "SHA1", "checksumValue": sha1s[-1]},
                                    {"algorithm": "SHA256", "checksumValue": str(entry["sha256"])}],
                      "licenseConcluded": NOASSERTION, "copyrightText": NOASSERTION,
                      "comment": f"mode {entry['mode']}, owner {entry['uid']}:{entry['gid']}"})
    return files, hashlib.sha1("".join(sorted(sha1s)).encode(), usedforsecurity=False).hexdigest()


def document(config: Config, found: Inventory, rendered: RenderedTree, artifacts: dict[str, dict[str, object]],
             created: int, tool_version: str) -> dict[str, object]:
    """The SPDX document. `artifacts` is build-report.json's (file name -> hypervisor, md5, sha512); `created`
    is the image's time, so the same build gives the same SBOM."""
    release, version = config.debian.release, config.cloudstack.version
    name = f"systemvmtemplate-{version}-{config.arch.cloudstack_name}-{release}"
    digest = hashlib.sha256("".join(sorted(str(info["sha512"]) for info in artifacts.values())).encode())
    namespace = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'sysvm:{name}:{digest.hexdigest()}')}"
    debs = [{"SPDXID": package.spdx_id, "name": package.name, "versionInfo": package.version,
             "downloadLocation": NOASSERTION, "filesAnalyzed": False, "licenseConcluded": NOASSERTION,
             "licenseDeclared": package.license, "copyrightText": NOASSERTION,
             "sourceInfo": f"built from Debian source package {package.source} {package.source_version}",
             **({"homepage": package.homepage} if package.homepage else {}),
             "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                               "referenceLocator": package.purl(release)}]}
            for package in found.packages]
    files, verification_code = _layer_files(rendered)
    layers = {"SPDXID": "SPDXRef-sysvm-layers", "name": "sysvm-layers", "versionInfo": tool_version,
              "downloadLocation": NOASSERTION, "filesAnalyzed": True,
              "packageVerificationCode": {"packageVerificationCodeValue": verification_code},
              "hasFiles": [file["SPDXID"] for file in files], "licenseConcluded": NOASSERTION,
              "licenseDeclared": NOASSERTION, "copyrightText": NOASSERTION, "primaryPackagePurpose": "FILE",
              "comment": "The files sysvm adds to the image: its layers and any of the build's, rendered."}
    made = [{"SPDXID": f"SPDXRef-artifact-{id_part(str(info['hypervisor']))}", "name": file_name,
             "packageFileName": file_name, "versionInfo": version, "downloadLocation": NOASSERTION,
             "filesAnalyzed": False, "primaryPackagePurpose": "OPERATING-SYSTEM",
             "checksums": [{"algorithm": "MD5", "checksumValue": str(info["md5"])},
                           {"algorithm": "SHA512", "checksumValue": str(info["sha512"])}],
             "licenseConcluded": NOASSERTION, "licenseDeclared": NOASSERTION, "copyrightText": NOASSERTION,
             "comment": f"CloudStack system VM template for {info['hypervisor']}, Debian {release}"}
            for file_name, info in sorted(artifacts.items())]
    relationships = []
    for artifact in made:
        relationships.append({"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                              "relatedSpdxElement": artifact["SPDXID"]})
        relationships += [{"spdxElementId": artifact["SPDXID"], "relationshipType": "CONTAINS",
                           "relatedSpdxElement": part["SPDXID"]} for part in (*debs, layers)]
    return {
        "spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT", "name": name,
        "documentNamespace": namespace,
        "creationInfo": {"created": datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "creators": [f"Tool: sysvm-{tool_version}"]},
        "packages": [*made, layers, *debs], "files": files, "relationships": relationships,
        "hasExtractedLicensingInfos": [{"licenseId": ref, "extractedText": text}
                                       for ref, text in sorted(found.license_texts.items())],
    }


def write(path: Path, config: Config, tarball: Path, rendered: RenderedTree,
          artifacts: dict[str, dict[str, object]], created: int, tool_version: str) -> int:
    """Write the SBOM to path (a staging file: export moves it into place); the number of packages in it."""
    found = inventory(tarball)
    path.write_text(json.dumps(document(config, found, rendered, artifacts, created, tool_version), indent=1) + "\n")
    return len(found.packages)
