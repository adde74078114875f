"""The metadata.ini CloudStack's management server registers the system VM templates from.

CloudStack's build writes metadata.ini with engine/schema/templateConfig.sh; the management server reads
it at start-up (SystemVmTemplateRegistration) to name, download and checksum the system VM templates it
registers. The layout changed between CloudStack versions; which layout a build writes is data
(export.metadata_formats in sysvm.yaml), chosen by cloudstack.version like the artifact names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from sysvm.hypervisors import HYPERVISORS

if TYPE_CHECKING:
    from sysvm.config import Config

FILE_NAME = "metadata.ini"

# CloudStack reads a section without an architecture in its name as an x86_64 template.
SECTION_DEFAULT_ARCH = "x86_64"

# What a section may hold, in the order templateConfig.sh writes them.
METADATA_KEYS = ("templatename", "checksum", "downloadurl", "filename", "arch", "guestos")

# The guest OS names CloudStack registers the template with: its Debian entry for the release the image
# is built from, except where the hypervisor's own catalogue has no Debian entry (VMware, XenServer).
DEBIAN_GUEST_OS = "Debian GNU/Linux {number} (64-bit)"
OTHER_LINUX_GUEST_OS = "Other Linux (64-bit)"


def version_key(version: str) -> tuple[int, int, int, int]:
    """A CloudStack version (4.20.0 or 4.20.0.1) as four numbers; a missing security release is 0."""
    numbers = [int(part) for part in version.split(".")] + [0, 0, 0, 0]
    return numbers[0], numbers[1], numbers[2], numbers[3]


class Versioned(Protocol):
    @property
    def from_version(self) -> str: ...


V = TypeVar("V", bound=Versioned)


def applying(entries: Iterable[V], version: str) -> V | None:
    """The entry with the newest from_version that is not newer than version, whatever the list order."""
    older = [entry for entry in entries if version_key(entry.from_version) <= version_key(version)]
    return max(older, key=lambda entry: version_key(entry.from_version), default=None)


@dataclass(frozen=True)
class Metadata:
    text: str
    sections: list[str]
    format_from: str  # from_version of the layout used

    def report(self) -> dict[str, object]:
        return {"file": FILE_NAME, "format_from_version": self.format_from, "sections": self.sections,
                "sha512": hashlib.sha512(self.text.encode()).hexdigest()}


def render(config: Config, names: Mapping[str, str], digests: Mapping[str, Mapping[str, str]]) -> Metadata | None:
    """metadata.ini for this build, or None when cloudstack.version predates every known layout.

    names: the artifact file name of every sysvm hypervisor, built or not; digests: for each built one,
    its "md5" and "sha512". The text is byte for byte what templateConfig.sh writes for the same files.
    """
    layout = config.export.metadata_format_for(config.cloudstack.version)
    if layout is None:
        return None
    major, minor, patch, security = version_key(config.cloudstack.version)
    version = f"{major}.{minor}.{patch}"
    arch = config.arch.cloudstack_name
    base = config.export.download_url.format(major=major, minor=minor, version=config.cloudstack.version)
    base = base if base.endswith("/") else base + "/"
    # templateConfig.sh truncates the file with a bare echo, hence the empty first line; every section,
    # [default] included, ends with an empty line.
    lines = ["", "[default]", f"version = {version}.{security}", ""]
    sections = ["default"]
    for hypervisor in HYPERVISORS:
        if hypervisor.cloudstack in layout.arch_sections:
            section = f"{hypervisor.cloudstack}-{arch}"
        elif arch == SECTION_DEFAULT_ARCH:
            section = hypervisor.cloudstack
        else:
            continue  # the section would register this image as an x86_64 template
        built = digests.get(hypervisor.artifact.name)
        if built is None and not layout.every_section:
            continue
        # A template not built keeps its section where the reader needs every one, with an empty
        # checksum: what templateConfig.sh writes for a file missing from the checksum list.
        filename = names[hypervisor.artifact.name]
        values = {
            "templatename": layout.templatename.format(hypervisor=hypervisor.cloudstack, version=version, arch=arch),
            "checksum": built[layout.checksum] if built is not None else "",
            "downloadurl": base + filename,
            "filename": filename,
            "arch": arch,
            "guestos": (OTHER_LINUX_GUEST_OS if hypervisor.other_linux
                        else DEBIAN_GUEST_OS.format(number=config.release.number)),
        }
        lines += [f"[{section}]", *(f"{key} = {values[key]}" for key in layout.keys), ""]
        sections.append(section)
    return Metadata("\n".join(lines) + "\n", sections, layout.from_version)
