"""One typed, validated build configuration from sysvm.yaml, an optional user file and --set overrides.

Every value remembers where it came from (file and line, or the --set argument) so that an error can
name it. Validation happens here, before any stage runs.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from sysvm.cloudstack import locate
from sysvm.errors import SysvmError
from sysvm.fsutil import layer_folder_problem
from sysvm.hypervisors import ARTIFACTS, BY_CLOUDSTACK_NAME
from sysvm.metadata import METADATA_KEYS, applying
from sysvm.resources import resource

DEFAULTS_FILE = resource("sysvm.yaml")

KNOWN_ROLES = ("consoleproxy", "secstorage", "router", "vpcrouter", "dhcpsrvr", "sharedfsvm", "cksnode")
# CloudStack starts its internal and external load balancer VMs from the same template: the boot-time
# setup knows them (services.roles), though sysvm neither lists them in `roles` nor verifies them.
SETUP_ONLY_ROLES = ("ilbvm", "elbvm")
SERVICE_NAME = r"[A-Za-z0-9][A-Za-z0-9@_.:-]*"  # a systemd service name, without ".service"
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".mount", ".target")
KNOWN_RELEASES = ("buster", "bullseye", "bookworm", "trixie")
VERSION_PATTERN = r"[0-9]+\.[0-9]+\.[0-9]+(\.[0-9]+)?"  # a CloudStack version: 4.20.0, or 4.19.0.1 for a security release
# The virtual hardware versions an OVA may ask for: 7 (ESX/ESXi 4.0) to 22 (ESXi 9.0).
VMWARE_HARDWARE_VERSIONS = range(7, 23)
# A settings file is small: this bounds what a hostile one (an alias bomb, a huge file) may cost to read.
MAX_FILE_BYTES = 1 << 20
MAX_VALUES = 100_000  # values of a document once its aliases are expanded
FILE_NAME_BYTES = 255  # an artifact's file name, extension included


# ----------------------------------------------------------------------------------- kinds of settings
# What a setting becomes (a package name handed to mmdebstrap, a line of apt's sources, a word in a
# shell-sourced file, a file name) decides what it may hold. Each field below declares its kind with
# Annotated, and loading checks it there, so that no value carries a separator, a newline or shell syntax
# into what reads it. Patterns are ASCII only: `[0-9]`, never `\d`, which matches any Unicode digit.


@dataclass(frozen=True)
class Text:
    """A string setting of a grammar: `pattern` must match it whole; `valid` may check it further."""

    expected: str  # what the error says is expected
    pattern: str
    valid: typing.Callable[[str], bool] = lambda value: True

    def problem(self, value: str) -> str | None:
        if re.fullmatch(self.pattern, value, re.ASCII) and self.valid(value):
            return None
        return f"expected {self.expected}, got {value!r}"


@dataclass(frozen=True)
class Between:
    """An integer setting within bounds, both included."""

    low: int
    high: int
    unit: str = ""  # after the bounds: "MiB"
    what: str = ""  # before them: "a TCP port"

    def problem(self, value: int) -> str | None:
        if self.low <= value <= self.high:
            return None
        what, unit = f"{self.what} " if self.what else "", f" {self.unit}" if self.unit else ""
        return f"expected {what}{self.low}-{self.high}{unit}, got {value}"


def _is_date(value: str) -> bool:
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        return False
    return True


_URL = r"(https?://[A-Za-z0-9.-]+(:[0-9]+)?|file://)(/[A-Za-z0-9._~%+/-]*)?"
VERSION = Text("a version like 4.20.0", VERSION_PATTERN)
DATE = Text("a date like 2025-01-31, or empty", r"([0-9]{4}-[0-9]{2}-[0-9]{2})?", lambda v: not v or _is_date(v))
MIRROR = Text("auto or a Debian mirror URL such as http://deb.debian.org/debian", f"auto|{_URL}")
RELEASE_MIRROR = Text("a Debian mirror URL such as http://archive.debian.org/debian, or empty", f"({_URL})?")
PACKAGE = Text("a Debian package name (a-z, 0-9, +, -, ., two characters at least)", r"[a-z0-9][a-z0-9+.-]+")
SUITE = Text("an apt suite such as bookworm-security or buster/updates", r"[a-z0-9][a-z0-9.-]*(/[a-z0-9.-]+)?")
WORD = Text("a name of letters, digits, '.', '_' and '-'", r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SERIAL_CONSOLE = Text("a serial console device such as ttyS0 or ttyAMA0", r"tty[A-Za-z]+[0-9]+")
QEMU_BINARY = Text("a QEMU system emulator such as qemu-system-x86_64", r"qemu-system-[a-z0-9_]+")
QEMU_CPU = Text("a QEMU CPU model such as cortex-a72, or empty", r"([A-Za-z0-9][A-Za-z0-9_.,=+-]*)?")
QEMU_VGA = Text("a QEMU display type such as std, or empty", r"([a-z]+)?")
FIRMWARE = Text("an absolute path such as /usr/share/qemu-efi-aarch64/QEMU_EFI.fd, or empty",
                r"(/[A-Za-z0-9._+-]+)*")
PATH_GLOB = Text("an absolute dpkg path glob such as /usr/share/doc/*", r"/[A-Za-z0-9._+*?/\[\]-]*")
# Placeholders are checked by the export's own validation; these keep separators and syntax out.
NAME_PATTERN = Text("a file name pattern of letters, digits, '.', '_', '+', '-' and {placeholders}",
                    r"[A-Za-z0-9_+{}-][A-Za-z0-9._+{}-]*")
NAME_PATTERN_OR_EMPTY = Text(NAME_PATTERN.expected + ", or empty", f"({NAME_PATTERN.pattern})?")
TEMPLATE_NAME = Text("a template name of letters, digits, '.', '_', '-' and {placeholders}", r"[A-Za-z0-9._{}-]+")
DOWNLOAD_URL = Text("a URL such as https://download.example.org/systemvm/{major}.{minor}/",
                    r"https?://[A-Za-z0-9.-]+(:[0-9]+)?(/[A-Za-z0-9._~%+{}/-]*)?")
SIGNING_KEY = Text("a GnuPG key id or fingerprint (8 to 40 hexadecimal digits) or the path of a secret key "
                   "file, or empty", r"[^\x00-\x1f\x7f]*",
                   lambda value: not value or value[0] != "-")  # gpg would read a leading - as an option
LOCAL_PATH = Text("a path of printable characters, or empty", r"[^\x00-\x1f\x7f]*")

Version = Annotated[str, VERSION]
Package = Annotated[str, PACKAGE]
MiB = Annotated[int, Between(256, 65536, "MiB")]
Seconds = Annotated[int, Between(30, 86400, "seconds")]
Port = Annotated[int, Between(1, 65535, what="a TCP port")]
Minutes = Annotated[int, Between(1, 59, "minutes")]


@dataclass(frozen=True)
class CloudStack:
    version: Version
    build_date: Annotated[str, DATE] = ""  # ISO 8601 date; empty means SOURCE_DATE_EPOCH, else no date at all
    scripts: Annotated[str, LOCAL_PATH] = ""  # a CloudStack source tree whose cloud-scripts.tgz is baked into the image


@dataclass(frozen=True)
class Debian:
    release: str
    architecture: str  # an entry of architectures
    mirror: Annotated[str, MIRROR]  # "auto": the Debian mirror the host's apt uses; a release may name its own
    security_mirror: Annotated[str, MIRROR]
    # A cached rootfs is reused without the mirror (unreachable) only while it is younger than this; 0: never.
    max_rootfs_age_days: Annotated[int, Between(0, 3650, "days")] = 7


@dataclass(frozen=True)
class Release:
    """What differs between Debian releases, as data."""

    java_package: Package
    iptables_backend: Literal["legacy", "nft"]
    security_suite: Annotated[str, SUITE]
    number: Annotated[int, Between(1, 99, what="Debian's release number")]  # Debian's release number (12 for bookworm): the guest OS CloudStack registers
    mirror: Annotated[str, RELEASE_MIRROR] = ""  # when set, the release's default mirror (buster: the archive)
    security_mirror: Annotated[str, RELEASE_MIRROR] = ""
    without_security: bool = False  # build without the security suite: only on the user's explicit say-so
    merge_usr: bool = False  # /bin, /sbin, /lib... are links into /usr (before bookworm, no package makes them)
    # systemd starts a device's SYSTEMD_WANTS units on each of its change events, not only on the first (a
    # Shared FileSystem VM grows its file system so); where it does not, a udev rule of the image does
    systemd_wants_on_change: bool = True
    package_renames: dict[str, Package] = field(default_factory=dict)
    packages_dropped: list[Package] = field(default_factory=list)
    packages_added: list[Package] = field(default_factory=list)  # what the release needs beside packages.*


@dataclass(frozen=True)
class QemuMachine:
    """How QEMU boots an image of an architecture (Packer's builder and verify alike)."""

    binary: Annotated[str, QEMU_BINARY]  # qemu-system-x86_64, qemu-system-aarch64
    machine: Annotated[str, WORD]  # -machine type
    cpu: Annotated[str, QEMU_CPU] = ""  # -cpu under emulation; empty: QEMU's default (with KVM: the host's)
    firmware: Annotated[str, FIRMWARE] = ""  # -bios file; empty: the machine's default (SeaBIOS on pc)
    vga: Annotated[str, QEMU_VGA] = ""  # -vga type for the guest's text console (tty1); empty: none, the serial console only


@dataclass(frozen=True)
class Architecture:
    """What differs between CPU architectures, as data."""

    cloudstack_name: Annotated[str, WORD]  # CloudStack's CPU.CPUArch name, also the kernel's: x86_64, aarch64
    packages: list[Package]  # the kernel and the boot loader
    hypervisors: list[str]  # the artifacts built for this architecture
    firmware: Literal["bios", "efi"]  # how the disk boots: MBR + GRUB boot sector, or GPT + EFI partition
    grub_platform: Annotated[str, WORD]  # i386-pc, arm64-efi: the folder of GRUB's modules in the image
    serial_console: Annotated[str, SERIAL_CONSOLE]  # ttyS0, ttyAMA0: also in the shell-sourced /etc/default/grub
    qemu: QemuMachine
    # With releases.<r>.merge_usr, the top-level folders made links into /usr before anything is installed
    usr_merged_folders: list[Annotated[str, WORD]] = field(default_factory=lambda: ["bin", "sbin", "lib"])


@dataclass(frozen=True)
class Packages:
    common: list[Package]
    roles: dict[str, list[Package]]


@dataclass(frozen=True)
class RedundantRouter:
    """What a role told redundant_router=true runs in place of some of its services."""

    roles: list[str]  # the roles that may be redundant
    instead_of: list[str]  # services it does not run then
    add: list[str]  # services it runs then


@dataclass(frozen=True)
class Services:
    """The one declaration of which services run in which role. The disk stage disables every `managed`
    service and every unit of `disabled_at_build`; Packer checks that no managed one came back; the
    render stage writes all but `disabled_at_build` into the image, where the boot-time setup enables the
    role's own and disables the other managed ones; verify hands the role's to the suites."""

    managed: list[str]  # every service whose state depends on the role (names without ".service")
    roles: dict[str, list[str]]  # what each role enables at boot; the other managed services are disabled
    redundant_router: RedundantRouter
    disabled_at_build: list[str] = field(default_factory=list)  # unit names: off whatever the role

    def image_declaration(self) -> dict[str, object]:
        """The part the boot-time setup reads: what it decides per role."""
        return {"managed": list(self.managed), "roles": {role: list(names) for role, names in self.roles.items()},
                "redundant_router": dataclasses.asdict(self.redundant_router)}


@dataclass(frozen=True)
class Disk:
    size_mib: Annotated[int, Between(1024, 65536, "MiB")]


@dataclass(frozen=True)
class ConsoleProxy:
    http_port: Port
    https_port: Port
    websocket_port: Port
    websocket_tls_port: Port
    websocket_tls: bool


@dataclass(frozen=True)
class HealthChecks:
    basic_interval_minutes: Minutes
    advanced_interval_minutes: Minutes


@dataclass(frozen=True)
class NamePattern:
    from_version: Version
    name_pattern: Annotated[str, NAME_PATTERN]  # placeholders: {version} {arch} {hypervisor}


@dataclass(frozen=True)
class MetadataFormat:
    """How metadata.ini is laid out for the management servers of from_version and later."""

    from_version: Version
    checksum: Literal["md5", "sha512"]  # the digest the management server compares with the file's
    templatename: Annotated[str, TEMPLATE_NAME]  # placeholders: {hypervisor} (CloudStack's name) {version} (x.y.z) {arch}
    keys: list[str]  # per section, in order: a selection of metadata.METADATA_KEYS
    arch_sections: list[str] = field(default_factory=list)  # CloudStack hypervisors named <hv>-<arch>
    every_section: bool = False  # its reader fails on a missing section: templates not built get one


@dataclass(frozen=True)
class Export:
    hypervisors: list[str]
    name_patterns: list[NamePattern]  # by CloudStack version: the newest from_version not above it applies
    download_url: Annotated[str, DOWNLOAD_URL]  # metadata.ini's downloadurl: this plus the file name
    vmware_hardware_version: Annotated[int, Between(
        VMWARE_HARDWARE_VERSIONS.start, VMWARE_HARDWARE_VERSIONS.stop - 1, what="a VMware virtual hardware version")]
    metadata_formats: list[MetadataFormat] = field(default_factory=list)  # by version, as name_patterns
    name_pattern: Annotated[str, NAME_PATTERN_OR_EMPTY] = ""  # when set, used for every version instead of name_patterns
    signing_key: Annotated[str, SIGNING_KEY] = ""  # GnuPG key id or fingerprint, or a secret key file; empty: unsigned

    def name_pattern_for(self, version: str) -> str:
        chosen = applying(self.name_patterns, version)
        # Validation makes sure one applies when no override is set.
        return self.name_pattern or (chosen.name_pattern if chosen is not None else "")

    def metadata_format_for(self, version: str) -> MetadataFormat | None:
        return applying(self.metadata_formats, version)


@dataclass(frozen=True)
class Packer:
    memory_mib: MiB
    ssh_timeout_s: Seconds


@dataclass(frozen=True)
class Verify:
    roles: list[str]
    memory_mib: MiB
    # the root disk each role boots with: larger than the template's, as CloudStack gives
    disk_mib: Annotated[int, Between(1024, 262144, "MiB")]
    boot_timeout_s: Seconds
    accelerator: Literal["auto", "kvm", "tcg"]
    sharedfs_filesystem: Literal["xfs", "ext4"] = "xfs"  # what the Shared FileSystem VM makes on its data disk
    cloudstack_scripts: Annotated[str, LOCAL_PATH] = ""  # a CloudStack source tree: start roles as a 4.17+ host does, with its scripts


@dataclass(frozen=True)
class Config:
    cloudstack: CloudStack
    debian: Debian
    releases: dict[str, Release]
    architectures: dict[str, Architecture]
    packages: Packages
    roles: list[str]
    services: Services
    disk: Disk
    consoleproxy: ConsoleProxy
    health_checks: HealthChecks
    export: Export
    packer: Packer
    verify: Verify
    path_excludes: list[Annotated[str, PATH_GLOB]] = field(default_factory=list)  # dpkg path-exclude globs
    path_includes: list[Annotated[str, PATH_GLOB]] = field(default_factory=list)  # dpkg path-include globs
    overlay_layers: list[Annotated[str, LOCAL_PATH]] = field(default_factory=list)  # extra overlay folders, applied last

    @property
    def release(self) -> Release:
        return self.releases[self.debian.release]

    @property
    def arch(self) -> Architecture:
        return self.architectures[self.debian.architecture]

    @property
    def hypervisors(self) -> list[str]:
        """The artifacts this build makes: export.hypervisors that the architecture is built for."""
        return [name for name in self.export.hypervisors if name in self.arch.hypervisors]

    def package_list(self) -> list[str]:
        """Every package of every role for the chosen release and architecture, renamed and filtered per release."""
        wanted = [*self.packages.common, *self.arch.packages,
                  *(p for role in self.roles for p in self.packages.roles.get(role, []))]
        wanted += [self.release.java_package, *self.release.packages_added]
        renamed = [self.release.package_renames.get(name, name) for name in wanted]
        dropped = set(self.release.packages_dropped)
        return sorted({name for name in renamed if name not in dropped})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)



# ---------------------------------------------------------------------------------------------- loading

Origins = dict[tuple[str, ...], str]


class _SettingsLoader(yaml.SafeLoader):
    """YAML without dates: an unquoted 2025-13-45 stays a string for the setting's own check to name,
    instead of failing inside the parser. Everything else is SafeLoader's."""


_SettingsLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _expanded_size(root: yaml.Node) -> int:
    """How many values the document holds once every alias is expanded; stops counting past MAX_VALUES.
    Composing shares an anchored node between its aliases, so this costs one visit per distinct node."""
    sizes: dict[int, int] = {}
    pending: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in pending:
            raise ValueError("an alias refers to a value that contains it")
        pending.add(id(node))
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children: list[yaml.Node] = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        for child in children:
            total = min(total + size(child), MAX_VALUES + 1)
        pending.discard(id(node))
        sizes[id(node)] = total
        return total

    return size(root)


def _parse(text: str, source: str, lines: bool = True) -> tuple[Any, yaml.Node | None]:
    """The document in `text` and its node tree; any problem is one SysvmError naming `source` (and its
    line, for a file)."""
    loader = None
    try:
        loader = _SettingsLoader(text)  # its reader refuses non-printable characters at once
        node = loader.get_single_node()
        if node is not None:
            if _expanded_size(node) > MAX_VALUES:
                line = f":{node.start_mark.line + 1}" if lines and node.start_mark else ""
                raise SysvmError(f"{source}{line}: more than {MAX_VALUES} values once its YAML aliases are "
                                 "expanded: refused")
            return loader.construct_document(node), node
        return None, None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if lines and mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SysvmError(f"{source}{where}: malformed YAML: {problem}") from error
    except (ValueError, TypeError, RecursionError) as error:  # too deep, a self-containing alias, ...
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SysvmError(f"{source}: malformed YAML: {problem}") from error
    finally:
        if loader is not None:
            loader.dispose()


def _load_yaml(path: Path) -> tuple[dict[str, Any], Origins, list[tuple[str, ...]]]:
    """The file's settings, where each key was set, and the keys it sets to something other than a mapping
    (those replace what an earlier source held beneath them)."""
    if not path.is_file():
        raise SysvmError(f"{path}: configuration file not found")
    with path.open("rb") as handle:
        raw = handle.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise SysvmError(f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB: not a settings file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise SysvmError(f"{path}:{line}: not UTF-8 text (byte {error.start}): save the file as UTF-8") from None
    data, node = _parse(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SysvmError(f"{path}: expected a mapping of settings at the top level")
    origins: Origins = {}
    replaced: list[tuple[str, ...]] = []
    if node is not None:
        _record_origins(node, (), str(path), origins, replaced)
    return data, origins, replaced


def _record_origins(node: yaml.Node, prefix: tuple[str, ...], source: str, origins: Origins,
                    replaced: list[tuple[str, ...]]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            origins[key] = f"{source}:{key_node.start_mark.line + 1}"
            if not isinstance(value_node, yaml.MappingNode):
                replaced.append(key)
            _record_origins(value_node, key, source, origins, replaced)


def _take_over(origins: Origins, newer: Origins, replaced: typing.Iterable[tuple[str, ...]]) -> None:
    """A later source's origins over an earlier one's: where it replaced a value, nothing the earlier source
    said beneath it is blamed any more."""
    for path in replaced:
        for key in [key for key in origins if len(key) > len(path) and key[: len(path)] == path]:
            del origins[key]
    origins.update(newer)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_set(data: dict[str, Any], origins: Origins, assignment: str) -> dict[str, Any]:
    if "=" not in assignment:
        raise SysvmError(f"--set {_shown(assignment)}: expected key=value (for example debian.release=bullseye)")
    dotted, raw = assignment.split("=", 1)
    path = tuple(part for part in dotted.strip().split("."))
    if not all(re.fullmatch(r"[A-Za-z0-9_+-]+", part, re.ASCII) for part in path):
        raise SysvmError(f"--set {_shown(assignment)}: expected a dotted key such as disk.size_mib")
    source = f"--set {_shown(assignment)}"
    try:
        value = _parse(raw, source, lines=False)[0] if raw.strip() else ""
    except SysvmError as error:
        raise SysvmError(f"{error} (the value is read as YAML: quote it, e.g. --set '{dotted}=\"...\"')") from None
    patch: dict[str, Any] = {path[-1]: value}
    for part in reversed(path[:-1]):
        patch = {part: patch}
    _take_over(origins, {path[:depth]: source for depth in range(1, len(path) + 1)}, [path])
    return _merge(data, patch)


# The defaults file as _load_yaml read it last, keyed by the file's path, inode, size and modification time.
_defaults_read: dict[tuple[str, int, int, int], tuple[dict[str, Any], Origins, list[tuple[str, ...]]]] = {}


def _load_defaults(path: Path) -> tuple[dict[str, Any], Origins, list[tuple[str, ...]]]:
    """_load_yaml of the defaults, read once while the file stays as it is (its pure-Python YAML parse takes
    some 50 ms, and a test run or a bench loads the configuration many times); a copy each time."""
    try:
        info = path.stat()
    except OSError:
        return _load_yaml(path)  # which says what is wrong with it
    key = (str(path.resolve()), info.st_ino, info.st_size, info.st_mtime_ns)
    if key not in _defaults_read:
        read = _load_yaml(path)
        _defaults_read.clear()
        _defaults_read[key] = read
    return copy.deepcopy(_defaults_read[key])


def load(user_file: Path | None = None, overrides: typing.Sequence[str] = (), defaults: Path = DEFAULTS_FILE) -> Config:
    data, origins, _ = _load_defaults(defaults)
    if user_file is not None:
        user_data, user_origins, replaced = _load_yaml(user_file)
        data = _merge(data, user_data)
        _take_over(origins, user_origins, replaced)
    for assignment in overrides:
        data = _apply_set(data, origins, assignment)
    config = _convert(Config, data, (), origins, str(defaults))
    _validate(config, origins)
    return config


# ------------------------------------------------------------------------------------------- conversion


def _where(path: tuple[str, ...], origins: Origins, fallback: str) -> str:
    for depth in range(len(path), 0, -1):
        if path[:depth] in origins:
            return origins[path[:depth]]
    return fallback


def _shown(text: str) -> str:
    """Text of the user's as an error shows it: on one line, a control character escaped."""
    return text if text.isprintable() else repr(text)


def _fail(path: tuple[str, ...], origins: Origins, fallback: str, message: str) -> SysvmError:
    key = ".".join(path) or "(top level)"
    return SysvmError(f"{_shown(_where(path, origins, fallback))}: {_shown(key)}: {message}")


def _describe(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin is Annotated:
        return _describe(typing.get_args(kind)[0])
    if origin is Literal:
        return "one of " + ", ".join(str(v) for v in typing.get_args(kind))
    if origin is list:
        return f"a list of {_describe(typing.get_args(kind)[0])}"
    if origin is dict:
        return f"a mapping of names to {_describe(typing.get_args(kind)[1])}"
    if dataclasses.is_dataclass(kind):
        return "a mapping"
    return {str: "a string", int: "an integer", bool: "true or false"}.get(kind, str(kind))


def _convert(kind: Any, value: Any, path: tuple[str, ...], origins: Origins, fallback: str) -> Any:
    origin = typing.get_origin(kind)
    if origin is Annotated:
        base, *checks = typing.get_args(kind)
        converted = _convert(base, value, path, origins, fallback)
        for check in checks:
            if (problem := check.problem(converted)) is not None:
                raise _fail(path, origins, fallback, problem)
        return converted
    bad = _fail(path, origins, fallback, f"expected {_describe(kind)}, got {value!r}")
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise bad
        hints = typing.get_type_hints(kind, include_extras=True)
        fields = {f.name: f for f in dataclasses.fields(kind)}
        for key in value:
            if key not in fields:
                expected = ", ".join(fields)
                raise _fail((*path, str(key)), origins, fallback, f"unknown key (expected one of: {expected})")
        converted = {}
        for name, spec in fields.items():
            if name in value:
                converted[name] = _convert(hints[name], value[name], (*path, name), origins, fallback)
            elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise _fail((*path, name), origins, fallback, "missing required key")
        return kind(**converted)
    if origin is Literal:
        if value not in typing.get_args(kind):
            raise bad
        return value
    if origin is list:
        if not isinstance(value, list):
            raise bad
        item = typing.get_args(kind)[0]
        return [_convert(item, entry, (*path, str(index)), origins, fallback) for index, entry in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        item = typing.get_args(kind)[1]
        return {str(k): _convert(item, v, (*path, str(k)), origins, fallback) for k, v in value.items()}
    if isinstance(kind, types.UnionType):
        raise TypeError(f"union types are not supported in the schema: {kind}")
    if kind is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if kind is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported schema type {kind}")


def _validate(config: Config, origins: Origins) -> None:
    fallback = str(DEFAULTS_FILE)

    def check(ok: bool, path: tuple[str, ...], message: str) -> None:
        if not ok:
            raise _fail(path, origins, fallback, message)

    def set_at(*path: str) -> str:
        """Where the other key of a check between two keys was set."""
        return _where(path, origins, fallback)

    check(config.debian.release in KNOWN_RELEASES, ("debian", "release"),
          f"unknown release {config.debian.release!r} (expected one of: {', '.join(KNOWN_RELEASES)})")
    check(config.debian.release in config.releases, ("releases",),
          f"no entry for release {config.debian.release!r}")
    for name, release in config.releases.items():
        check(name in KNOWN_RELEASES, ("releases", name),
              f"unknown release (expected one of: {', '.join(KNOWN_RELEASES)})")
        check(not (release.without_security and release.security_mirror), ("releases", name, "without_security"),
              "true contradicts security_mirror: set one of them")
    check(config.debian.architecture in config.architectures, ("debian", "architecture"),
          f"unknown architecture {config.debian.architecture!r} (expected one of: {', '.join(config.architectures)})")
    for name, arch in config.architectures.items():
        for index, hypervisor in enumerate(arch.hypervisors):
            check(hypervisor in ARTIFACTS, ("architectures", name, "hypervisors", str(index)),
                  f"unknown hypervisor {hypervisor!r} (expected one of: {', '.join(ARTIFACTS)})")
    for index, role in enumerate(config.roles):
        check(role in KNOWN_ROLES, ("roles", str(index)),
              f"unknown role {role!r} (expected one of: {', '.join(KNOWN_ROLES)})")
    for role in config.packages.roles:
        check(role in KNOWN_ROLES, ("packages", "roles", role),
              f"unknown role (expected one of: {', '.join(KNOWN_ROLES)})")
    _validate_services(config, check)
    for index, role in enumerate(config.verify.roles):
        check(role in config.roles, ("verify", "roles", str(index)),
              f"role {role!r} is not in roles ({', '.join(config.roles)}; set at {set_at('roles')})")
    for index, hypervisor in enumerate(config.export.hypervisors):
        check(hypervisor in ARTIFACTS, ("export", "hypervisors", str(index)),
              f"unknown hypervisor {hypervisor!r} (expected one of: {', '.join(ARTIFACTS)})")
    check(bool(config.hypervisors), ("export", "hypervisors"),
          f"none of them is built for {config.debian.architecture} "
          f"(architectures.{config.debian.architecture}.hypervisors: {', '.join(config.arch.hypervisors)})")
    _validate_export(config, check)
    check(config.verify.disk_mib >= config.disk.size_mib, ("verify", "disk_mib"),
          f"expected at least disk.size_mib ({config.disk.size_mib}, set at {set_at('disk', 'size_mib')}), "
          f"got {config.verify.disk_mib}")
    for path, value in ((("cloudstack", "scripts"), config.cloudstack.scripts),
                        (("verify", "cloudstack_scripts"), config.verify.cloudstack_scripts)):
        if value:
            try:
                locate(value)
            except SysvmError as error:
                raise _fail(path, origins, fallback, str(error)) from error
    for index, layer in enumerate(config.overlay_layers):
        if (problem := layer_folder_problem(layer)) is not None:
            raise _fail(("overlay_layers", str(index)), origins, fallback, problem)


def _validate_services(config: Config, check: typing.Callable[[bool, tuple[str, ...], str], None]) -> None:
    services = config.services
    setup_roles = (*KNOWN_ROLES, *SETUP_ONLY_ROLES)

    def check_names(names: list[str], path: tuple[str, ...], managed: bool) -> None:
        for index, name in enumerate(names):
            check(bool(re.fullmatch(SERVICE_NAME, name)) and not name.endswith(".service"), (*path, str(index)),
                  f"expected a service name without .service, got {name!r}")
            # The setup disables whatever a role does not enable among the managed services only: a service
            # outside them would stay on in every other role, and would not be off at build either.
            check(not managed or name in services.managed, (*path, str(index)),
                  f"{name!r} is not in services.managed ({', '.join(services.managed)})")

    check_names(services.managed, ("services", "managed"), managed=False)
    check(len(set(services.managed)) == len(services.managed), ("services", "managed"), "a service is listed twice")
    for role, names in services.roles.items():
        check(role in setup_roles, ("services", "roles", role),
              f"unknown role (expected one of: {', '.join(setup_roles)})")
        check_names(names, ("services", "roles", role), managed=True)
    for role in config.roles:
        check(role in services.roles, ("services", "roles"),
              f"no entry for role {role!r} (list its services, or [] for none)")
    redundant = services.redundant_router
    for index, role in enumerate(redundant.roles):
        check(role in services.roles, ("services", "redundant_router", "roles", str(index)),
              f"role {role!r} has no entry in services.roles")
    check_names(redundant.instead_of, ("services", "redundant_router", "instead_of"), managed=True)
    check_names(redundant.add, ("services", "redundant_router", "add"), managed=True)
    for index, unit in enumerate(services.disabled_at_build):
        check(bool(re.fullmatch(SERVICE_NAME, unit)) and unit.endswith(UNIT_SUFFIXES),
              ("services", "disabled_at_build", str(index)),
              f"expected a unit name such as apt-daily.timer ({', '.join(UNIT_SUFFIXES)}), got {unit!r}")


def _placeholders_ok(pattern: str, allowed: dict[str, object]) -> bool:
    try:
        pattern.format(**allowed)
    except (KeyError, IndexError, ValueError):
        return False
    return True


def _validate_export(config: Config, check: typing.Callable[[bool, tuple[str, ...], str], None]) -> None:
    export = config.export

    def check_pattern(pattern: str, path: tuple[str, ...]) -> None:
        check("{hypervisor}" in pattern and "{version}" in pattern, path, "must contain {version} and {hypervisor}")
        check(_placeholders_ok(pattern, {"version": "v", "arch": "a", "hypervisor": "h"}), path,
              "only {version}, {arch} and {hypervisor} may be used")
        # The artifacts' names as export makes them: no folder, nothing hidden, within a file name's length.
        for hypervisor, artifact in ARTIFACTS.items():
            name = pattern.format(version=config.cloudstack.version, hypervisor=hypervisor,
                                  arch=config.arch.cloudstack_name) + f".{artifact.extension}"
            check(".." not in name, path, f"gives the file name {name!r}: '..' is not allowed")
            check(len(name.encode()) <= FILE_NAME_BYTES, path,
                  f"gives a file name of {len(name.encode())} bytes for {hypervisor} (at most {FILE_NAME_BYTES})")

    def check_versions(entries: typing.Sequence[NamePattern | MetadataFormat], key: str) -> None:
        for index, entry in enumerate(entries):
            check(bool(re.fullmatch(VERSION_PATTERN, entry.from_version)), ("export", key, str(index), "from_version"),
                  f"expected a version like 4.20.0, got {entry.from_version!r}")
        versions = [entry.from_version for entry in entries]
        check(len(set(versions)) == len(versions), ("export", key), "two entries have the same from_version")

    if export.name_pattern:
        check_pattern(export.name_pattern, ("export", "name_pattern"))
    check_versions(export.name_patterns, "name_patterns")
    for index, entry in enumerate(export.name_patterns):
        check_pattern(entry.name_pattern, ("export", "name_patterns", str(index), "name_pattern"))
    check(bool(export.name_pattern_for(config.cloudstack.version)), ("export", "name_patterns"),
          f"no entry applies to cloudstack.version {config.cloudstack.version} (set export.name_pattern, "
          "or add an entry with an older from_version)")
    check(bool(re.fullmatch(r"[a-z][a-z0-9+.-]*://\S+", export.download_url)), ("export", "download_url"),
          f"expected a URL such as https://download.example.org/systemvm/, got {export.download_url!r}")
    check(_placeholders_ok(export.download_url, {"major": 4, "minor": 20, "version": "4.20.0"}),
          ("export", "download_url"), "only {major}, {minor} and {version} may be used")
    check_versions(export.metadata_formats, "metadata_formats")
    for index, layout in enumerate(export.metadata_formats):
        path = ("export", "metadata_formats", str(index))
        check(_placeholders_ok(layout.templatename, {"hypervisor": "h", "version": "v", "arch": "a"}),
              (*path, "templatename"), "only {hypervisor}, {version} and {arch} may be used")
        for position, key in enumerate(layout.keys):
            check(key in METADATA_KEYS, (*path, "keys", str(position)),
                  f"unknown key {key!r} (expected one of: {', '.join(METADATA_KEYS)})")
        check(len(set(layout.keys)) == len(layout.keys), (*path, "keys"), "a key is listed twice")
        for position, name in enumerate(layout.arch_sections):
            check(name in BY_CLOUDSTACK_NAME, (*path, "arch_sections", str(position)),
                  f"unknown CloudStack hypervisor {name!r} (expected one of: {', '.join(BY_CLOUDSTACK_NAME)})")
