"""One typed, validated build configuration from sysvm.yaml, an optional user file and --set overrides.

Every value remembers where it came from (file and line, or the --set argument) so that an error can
name it. Validation happens here, before any stage runs.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sysvm.cloudstack import locate
from sysvm.errors import SysvmError
from sysvm.fsutil import layer_folder_problem
from sysvm.hypervisors import ARTIFACTS, BY_CLOUDSTACK_NAME
from sysvm.metadata import METADATA_KEYS, applying
from sysvm.resources import resource

DEFAULTS_FILE = resource("sysvm.yaml")

KNOWN_ROLES = ("consoleproxy", "secstorage", "router", "vpcrouter", "dhcpsrvr")
# CloudStack starts its internal and external load balancer VMs from the same template: the boot-time
# setup knows them (services.roles), though sysvm neither lists them in `roles` nor verifies them.
SETUP_ONLY_ROLES = ("ilbvm", "elbvm")
SERVICE_NAME = r"[A-Za-z0-9][A-Za-z0-9@_.:-]*"  # a systemd service name, without ".service"
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".mount", ".target")
KNOWN_RELEASES = ("buster", "bullseye", "bookworm", "trixie")
VERSION_PATTERN = r"\d+\.\d+\.\d+(\.\d+)?"  # a CloudStack version: 4.20.0, or 4.19.0.1 for a security release
# The virtual hardware versions an OVA may ask for: 7 (ESX/ESXi 4.0) to 22 (ESXi 9.0).
VMWARE_HARDWARE_VERSIONS = range(7, 23)


@dataclass(frozen=True)
class CloudStack:
    version: str
    build_date: str = ""  # ISO 8601 date; empty means SOURCE_DATE_EPOCH, else no date at all
    scripts: str = ""  # a CloudStack source tree whose cloud-scripts.tgz is baked into the image


@dataclass(frozen=True)
class Debian:
    release: str
    architecture: str  # an entry of architectures
    mirror: str  # "auto": the Debian mirror the host's apt uses; a release may name its own default
    security_mirror: str
    # A cached rootfs is reused without the mirror (unreachable) only while it is younger than this; 0: never.
    max_rootfs_age_days: int = 7


@dataclass(frozen=True)
class Release:
    """What differs between Debian releases, as data."""

    java_package: str
    iptables_backend: Literal["legacy", "nft"]
    security_suite: str
    number: int  # Debian's release number (12 for bookworm): the guest OS CloudStack registers
    mirror: str = ""  # when set, the default mirror for this release (buster lives on the archive)
    security_mirror: str = ""
    without_security: bool = False  # build without the security suite: only on the user's explicit say-so
    package_renames: dict[str, str] = field(default_factory=dict)
    packages_dropped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class QemuMachine:
    """How QEMU boots an image of an architecture (Packer's builder and verify alike)."""

    binary: str  # qemu-system-x86_64, qemu-system-aarch64
    machine: str  # -machine type
    cpu: str = ""  # -cpu under emulation; empty: QEMU's default (with KVM: the host's)
    firmware: str = ""  # -bios file; empty: the machine's default (SeaBIOS on pc)
    vga: str = ""  # -vga type for the guest's text console (tty1); empty: none, the serial console only


@dataclass(frozen=True)
class Architecture:
    """What differs between CPU architectures, as data."""

    cloudstack_name: str  # CloudStack's CPU.CPUArch name, also the kernel's: x86_64, aarch64
    packages: list[str]  # the kernel and the boot loader
    hypervisors: list[str]  # the artifacts built for this architecture
    firmware: Literal["bios", "efi"]  # how the disk boots: MBR + GRUB boot sector, or GPT + EFI partition
    grub_platform: str  # i386-pc, arm64-efi: the folder of GRUB's modules in the image
    serial_console: str  # ttyS0, ttyAMA0
    qemu: QemuMachine


@dataclass(frozen=True)
class Packages:
    common: list[str]
    roles: dict[str, list[str]]


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
    size_mib: int


@dataclass(frozen=True)
class ConsoleProxy:
    http_port: int
    https_port: int
    websocket_port: int
    websocket_tls_port: int
    websocket_tls: bool


@dataclass(frozen=True)
class HealthChecks:
    basic_interval_minutes: int
    advanced_interval_minutes: int


@dataclass(frozen=True)
class NamePattern:
    from_version: str
    name_pattern: str  # placeholders: {version} {arch} {hypervisor}


@dataclass(frozen=True)
class MetadataFormat:
    """How metadata.ini is laid out for the management servers of from_version and later."""

    from_version: str
    checksum: Literal["md5", "sha512"]  # the digest the management server compares with the file's
    templatename: str  # placeholders: {hypervisor} (CloudStack's name) {version} (x.y.z) {arch}
    keys: list[str]  # per section, in order: a selection of metadata.METADATA_KEYS
    arch_sections: list[str] = field(default_factory=list)  # CloudStack hypervisors named <hv>-<arch>
    every_section: bool = False  # its reader fails on a missing section: templates not built get one


@dataclass(frozen=True)
class Export:
    hypervisors: list[str]
    name_patterns: list[NamePattern]  # by CloudStack version: the newest from_version not above it applies
    download_url: str  # metadata.ini's downloadurl is this plus the file name; {major} {minor} {version}
    vmware_hardware_version: int  # the OVA's vmx-N
    metadata_formats: list[MetadataFormat] = field(default_factory=list)  # by version, as name_patterns
    name_pattern: str = ""  # when set, used for every version instead of name_patterns

    def name_pattern_for(self, version: str) -> str:
        chosen = applying(self.name_patterns, version)
        # Validation makes sure one applies when no override is set.
        return self.name_pattern or (chosen.name_pattern if chosen is not None else "")

    def metadata_format_for(self, version: str) -> MetadataFormat | None:
        return applying(self.metadata_formats, version)


@dataclass(frozen=True)
class Packer:
    memory_mib: int
    ssh_timeout_s: int


@dataclass(frozen=True)
class Verify:
    roles: list[str]
    memory_mib: int
    disk_mib: int  # the root disk each role boots with: larger than the template's, as CloudStack gives
    boot_timeout_s: int
    accelerator: Literal["auto", "kvm", "tcg"]
    cloudstack_scripts: str = ""  # a CloudStack source tree: start roles as a 4.17+ host does, with its scripts


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
    path_excludes: list[str] = field(default_factory=list)  # dpkg path-exclude globs
    path_includes: list[str] = field(default_factory=list)  # dpkg path-include globs (exceptions)
    overlay_layers: list[str] = field(default_factory=list)  # extra overlay folders, applied last

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
        wanted.append(self.release.java_package)
        renamed = [self.release.package_renames.get(name, name) for name in wanted]
        dropped = set(self.release.packages_dropped)
        return sorted({name for name in renamed if name not in dropped})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)



# ---------------------------------------------------------------------------------------------- loading

Origins = dict[tuple[str, ...], str]


def _load_yaml(path: Path) -> tuple[dict[str, Any], Origins]:
    if not path.is_file():
        raise SysvmError(f"{path}: configuration file not found")
    text = path.read_text(encoding="utf-8")
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else {}
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SysvmError(f"{path}{where}: malformed YAML: {problem}") from error
    if not isinstance(data, dict):
        raise SysvmError(f"{path}: expected a mapping of settings at the top level")
    origins: Origins = {}
    if node is not None:
        _record_origins(node, (), str(path), origins)
    return data, origins


def _record_origins(node: yaml.Node, prefix: tuple[str, ...], source: str, origins: Origins) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            origins[key] = f"{source}:{key_node.start_mark.line + 1}"
            _record_origins(value_node, key, source, origins)


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
        raise SysvmError(f"--set {assignment}: expected key=value (for example debian.release=bullseye)")
    dotted, raw = assignment.split("=", 1)
    path = tuple(part for part in dotted.strip().split("."))
    if not dotted.strip() or any(not part for part in path):
        raise SysvmError(f"--set {assignment}: expected a dotted key such as disk.size_mib")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise SysvmError(f"--set {assignment}: value is not valid YAML") from error
    patch: dict[str, Any] = {path[-1]: value}
    for part in reversed(path[:-1]):
        patch = {part: patch}
    for depth in range(1, len(path) + 1):
        origins[path[:depth]] = f"--set {assignment}"
    return _merge(data, patch)


def load(user_file: Path | None = None, overrides: typing.Sequence[str] = (), defaults: Path = DEFAULTS_FILE) -> Config:
    data, origins = _load_yaml(defaults)
    if user_file is not None:
        user_data, user_origins = _load_yaml(user_file)
        data = _merge(data, user_data)
        origins.update(user_origins)
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


def _fail(path: tuple[str, ...], origins: Origins, fallback: str, message: str) -> SysvmError:
    key = ".".join(path) or "(top level)"
    return SysvmError(f"{_where(path, origins, fallback)}: {key}: {message}")


def _describe(kind: Any) -> str:
    origin = typing.get_origin(kind)
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
    bad = _fail(path, origins, fallback, f"expected {_describe(kind)}, got {value!r}")
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise bad
        hints = typing.get_type_hints(kind)
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
        if isinstance(value, datetime.date):  # YAML reads an unquoted 2025-01-31 as a date
            return value.isoformat()
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported schema type {kind}")


def _validate(config: Config, origins: Origins) -> None:
    fallback = str(DEFAULTS_FILE)

    def check(ok: bool, path: tuple[str, ...], message: str) -> None:
        if not ok:
            raise _fail(path, origins, fallback, message)

    check(bool(re.fullmatch(r"\d+\.\d+\.\d+(\.\d+)?", config.cloudstack.version)), ("cloudstack", "version"),
          f"expected a version like 4.20.0, got {config.cloudstack.version!r}")
    check(not config.cloudstack.build_date or bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", config.cloudstack.build_date)),
          ("cloudstack", "build_date"), f"expected a date like 2025-01-31, got {config.cloudstack.build_date!r}")
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
    check(config.debian.max_rootfs_age_days >= 0, ("debian", "max_rootfs_age_days"),
          f"expected 0 or more days, got {config.debian.max_rootfs_age_days}")
    for index, role in enumerate(config.roles):
        check(role in KNOWN_ROLES, ("roles", str(index)),
              f"unknown role {role!r} (expected one of: {', '.join(KNOWN_ROLES)})")
    for role in config.packages.roles:
        check(role in KNOWN_ROLES, ("packages", "roles", role),
              f"unknown role (expected one of: {', '.join(KNOWN_ROLES)})")
    _validate_services(config, check)
    for index, role in enumerate(config.verify.roles):
        check(role in config.roles, ("verify", "roles", str(index)),
              f"role {role!r} is not in roles ({', '.join(config.roles)})")
    for index, hypervisor in enumerate(config.export.hypervisors):
        check(hypervisor in ARTIFACTS, ("export", "hypervisors", str(index)),
              f"unknown hypervisor {hypervisor!r} (expected one of: {', '.join(ARTIFACTS)})")
    check(bool(config.hypervisors), ("export", "hypervisors"),
          f"none of them is built for {config.debian.architecture} "
          f"(architectures.{config.debian.architecture}.hypervisors: {', '.join(config.arch.hypervisors)})")
    _validate_export(config, check)
    for name, release in config.releases.items():
        check(release.number > 0, ("releases", name, "number"), f"expected Debian's release number, got {release.number}")
    check(config.disk.size_mib >= 1024, ("disk", "size_mib"), f"expected at least 1024, got {config.disk.size_mib}")
    check(config.verify.disk_mib >= config.disk.size_mib, ("verify", "disk_mib"),
          f"expected at least disk.size_mib ({config.disk.size_mib}), got {config.verify.disk_mib}")
    ports = config.consoleproxy
    for name in ("http_port", "https_port", "websocket_port", "websocket_tls_port"):
        value = getattr(ports, name)
        check(0 < value < 65536, ("consoleproxy", name), f"expected a TCP port 1-65535, got {value}")
    for name in ("basic_interval_minutes", "advanced_interval_minutes"):
        value = getattr(config.health_checks, name)
        check(1 <= value <= 59, ("health_checks", name), f"expected 1-59 minutes, got {value}")
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
    check(export.vmware_hardware_version in VMWARE_HARDWARE_VERSIONS, ("export", "vmware_hardware_version"),
          f"expected a VMware virtual hardware version from {VMWARE_HARDWARE_VERSIONS.start} to "
          f"{VMWARE_HARDWARE_VERSIONS.stop - 1}, got {export.vmware_hardware_version}")
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
