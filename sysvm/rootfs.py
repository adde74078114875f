"""rootfs stage: mmdebstrap builds the Debian root filesystem natively, with an apt cache reused across builds.

Before anything is decided, each suite's Release file is read from the mirror: the checksums of its
package indexes go into the stage key (a rootfs is rebuilt when the mirror publishes updates, not
reused forever), its Date is recorded for the build report, and a suite the mirror no longer serves
(an end-of-life release) stops the build with one line instead of a failed mmdebstrap.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import http.client
import json
import lzma
import re
import shlex
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from sysvm import log, tools
from sysvm.config import Config
from sysvm.errors import SysvmError
from sysvm.fsutil import remove_tree, scratch_dir
from sysvm.process import run
from sysvm.stage import Stage, as_recorded, earlier
from sysvm.workspace import Workspace

HOST_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
MANIFEST_FORMAT = "${Package}\\t${Version}\\t${Architecture}\\n"
# In the stage folder: when the rootfs was built (the age limit without a mirror) and each suite's Release date.
RECORD = "suites.json"
FETCH_TIMEOUT_S = 20.0
INDEX_HEAD_BYTES = 1 << 16  # enough of a compressed Packages index to read its first entries
GONE = (404, 410)
BINFMT = Path("/proc/sys/fs/binfmt_misc")


@dataclass(frozen=True)
class Rootfs:
    key: str
    tarball: Path
    packages: Path  # name, version, architecture of every installed package, tab-separated
    suites: dict[str, str] = field(default_factory=dict)  # suite: Date of its Release file (ISO 8601)
    without_security: bool = False  # built without the security suite, as the user asked


@dataclass(frozen=True)
class Suite:
    name: str
    mirror: str
    security: bool = False

    def source(self) -> str:
        return f"deb {self.mirror} {self.name} main"

    def url(self, path: str) -> str:
        return f"{self.mirror}/dists/{self.name}/{path}"


@dataclass(frozen=True)
class SuiteState:
    date: str  # the Release file's Date, ISO 8601
    indexes: str  # checksum lines of the package indexes apt reads for the architecture


class NotServed(Exception):
    """The mirror answers, but not with this suite (HTTP 404 on its Release file or on its packages)."""


class Unreachable(Exception):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {url} ({reason})")


def _host_uris(sources: tuple[Path, ...] = HOST_SOURCES) -> list[str]:
    """URIs of the host's apt sources, one-line and deb822 formats alike, in order."""
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files.extend(sorted(source.glob("*.list")) + sorted(source.glob("*.sources")))
        elif source.is_file():
            files.append(source)
    uris = []
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            words = line.split("#", 1)[0].split()
            if words[:1] == ["deb"]:
                uris.extend(word for word in words[1:] if "://" in word)
            elif words[:1] == ["URIs:"]:
                uris.extend(words[1:])
    return uris


def _pick(setting: str, release_default: str, suffix: str, key: str, sources: tuple[Path, ...]) -> str:
    if setting != "auto":
        return setting.rstrip("/")
    if release_default:
        return release_default.rstrip("/")
    for uri in _host_uris(sources):
        if uri.rstrip("/").endswith(suffix):
            return uri.rstrip("/")
    raise SysvmError(f"debian.{key}: 'auto' found no Debian mirror in the host's apt sources; set it explicitly")


def mirrors(config: Config, sources: tuple[Path, ...] = HOST_SOURCES) -> tuple[str, str]:
    """(mirror, security mirror): explicit settings, else the release's default, else the host's apt."""
    return (_pick(config.debian.mirror, config.release.mirror, "/debian", "mirror", sources),
            _pick(config.debian.security_mirror, config.release.security_mirror, "/debian-security",
                  "security_mirror", sources))


def suites(config: Config, sources: tuple[Path, ...] = HOST_SOURCES) -> list[Suite]:
    """The suites the rootfs is installed from; the security suite is left out only when the user says so."""
    release = config.debian.release
    mirror = _pick(config.debian.mirror, config.release.mirror, "/debian", "mirror", sources)
    found = [Suite(release, mirror)]
    if release != "buster":
        found.append(Suite(f"{release}-updates", mirror))
    if not config.release.without_security:
        security = _pick(config.debian.security_mirror, config.release.security_mirror, "/debian-security",
                         "security_mirror", sources)
        found.append(Suite(config.release.security_suite, security, security=True))
    return found


def apt_sources(config: Config, sources: tuple[Path, ...] = HOST_SOURCES) -> list[str]:
    return [suite.source() for suite in suites(config, sources)]


def fetch(url: str, limit: int | None = None, timeout: float = FETCH_TIMEOUT_S) -> bytes:
    """GET a URL, or only its first `limit` bytes. HTTP errors raise urllib.error.HTTPError, others OSError."""
    headers = {"User-Agent": "sysvm"}
    if limit is not None:  # a server may ignore the range: the read stops at `limit` all the same
        headers["Range"] = f"bytes=0-{limit - 1}"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        return response.read() if limit is None else response.read(limit)


def parse_release(text: str) -> tuple[str, list[str]]:
    """(Date, SHA256 lines) of a Release or InRelease file; the signature is apt's business, not ours."""
    date, sums, in_sums = "", [], False
    for line in text.splitlines():
        if line.startswith("-----BEGIN PGP SIGNATURE"):
            break
        if in_sums and line.startswith(" "):
            sums.append(line.strip())
            continue
        in_sums = line.startswith("SHA256:")
        if line.startswith("Date:"):
            date = line.split(":", 1)[1].strip()
    return date, sums


def _iso(date: str) -> str:
    try:
        return email.utils.parsedate_to_datetime(date).isoformat()
    except (TypeError, ValueError):
        return date


def _release_file(suite: Suite) -> str:
    for name in ("InRelease", "Release"):
        try:
            return fetch(suite.url(name)).decode(errors="replace")
        except urllib.error.HTTPError as error:
            if error.code not in GONE:
                raise
    raise NotServed(f"HTTP 404 for dists/{suite.name}/InRelease and Release")


def _first_package(data: bytes, name: str) -> str | None:
    """The Filename of the first entry in the head of a (compressed) Packages index."""
    try:
        if name.endswith(".xz"):
            data = lzma.LZMADecompressor().decompress(data)
        elif name.endswith(".gz"):
            data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    except (lzma.LZMAError, zlib.error):
        return None
    complete = data.decode(errors="replace").rpartition("\n")[0]  # the last line may be cut off
    match = re.search(r"^Filename: (\S+)$", complete, re.MULTILINE)
    return match[1] if match else None


def _check_pool(suite: Suite, indexes: list[str], architecture: str) -> None:
    """Ask for one package the index lists: an end-of-life security suite keeps its index on the mirror
    after its packages are gone, and apt would only find out one 404 at a time, deep into mmdebstrap."""
    sizes = {line.split()[-1]: line.split()[1] for line in indexes}
    names = [f"main/binary-{architecture}/Packages{ext}" for ext in (".xz", ".gz", "")]
    name = next((name for name in names if sizes.get(name, "0") != "0"), None)
    if name is None:
        return
    try:
        filename = _first_package(fetch(suite.url(name), limit=INDEX_HEAD_BYTES), name)
    except urllib.error.HTTPError as error:
        if error.code in GONE:  # a mirror may serve indexes only by hash; apt copes, this check has nothing to go on
            return
        raise
    if filename is None:
        return
    try:
        fetch(f"{suite.mirror}/{filename}", limit=1)
    except urllib.error.HTTPError as error:
        if error.code in GONE:
            raise NotServed(f"its index is served but not its packages: HTTP {error.code} for {filename}") from error
        raise


def probe(suite: Suite, architecture: str) -> SuiteState:
    """What the mirror serves for a suite now. Raises NotServed or Unreachable."""
    try:
        text = _release_file(suite)
        date, sums = parse_release(text)
        # Only the indexes apt installs from: a re-signed Release with a new Date but the same packages
        # must not cost a rebuild.
        prefixes = (f"main/binary-{architecture}/Packages", "main/binary-all/Packages")
        indexes = [line for line in sums if len(line.split()) == 3 and line.split()[2].startswith(prefixes)]
        _check_pool(suite, indexes, architecture)
    except urllib.error.HTTPError as error:
        raise Unreachable(error.url or suite.mirror, f"HTTP {error.code}") from error
    except urllib.error.URLError as error:
        raise Unreachable(suite.url(""), str(error.reason)) from error
    except (OSError, http.client.HTTPException) as error:
        raise Unreachable(suite.url(""), str(error) or type(error).__name__) from error
    return SuiteState(_iso(date), "\n".join(indexes) or hashlib.sha256(text.encode()).hexdigest())


def _advice(config: Config, suite: Suite) -> str:
    release = config.debian.release
    if suite.security:
        key = "debian.security_mirror" if config.debian.security_mirror != "auto" else f"releases.{release}.security_mirror"
        return (f"the release is past its security support; point {key} at an archive mirror "
                f"or set releases.{release}.without_security: true")
    key = "debian.mirror" if config.debian.mirror != "auto" else f"releases.{release}.mirror"
    return f"the release has moved to Debian's archive; point {key} at an archive mirror"


def suite_states(config: Config, wanted: list[Suite]) -> dict[str, SuiteState]:
    """Each suite's state on its mirror; one line naming the suite when the mirror does not serve it."""
    states = {}
    for suite in wanted:
        try:
            states[suite.name] = probe(suite, config.debian.architecture)
        except NotServed as error:
            raise SysvmError(f"{suite.name}: not on {suite.mirror} ({error}): {_advice(config, suite)}") from None
    return states


def package_inputs(config: Config) -> dict[str, list[str]]:
    """Config.package_list(), split by the setting that asks for each package, so that a rebuild names the
    setting that changed. What none of these settings names comes under `other packages`; the union stays
    exactly what mmdebstrap installs."""
    left = set(config.package_list())
    renames = config.release.package_renames
    settings = {"packages.common": config.packages.common,
                f"architectures.{config.debian.architecture}.packages": config.arch.packages,
                **{f"packages.roles.{role}": config.packages.roles.get(role, []) for role in config.roles},
                f"releases.{config.debian.release}.java_package": [config.release.java_package]}
    split = {}
    for name, listed in settings.items():
        asked = left & {renames.get(package, package) for package in listed}
        if asked:
            split[name] = sorted(asked)
            left -= asked
    return {**split, **({"other packages": sorted(left)} if left else {})}


def rootfs_inputs(config: Config, wanted: list[Suite]) -> dict[str, object]:
    """What the configuration asks of the rootfs, before the mirror is asked."""
    return {"debian.release": config.debian.release, "debian.architecture": config.debian.architecture,
            "apt sources": [suite.source() for suite in wanted], **package_inputs(config),
            "path_excludes": config.path_excludes, "path_includes": config.path_includes,
            f"releases.{config.debian.release}.merge_usr": config.release.merge_usr,
            **({f"architectures.{config.debian.architecture}.usr_merged_folders": config.arch.usr_merged_folders}
               if config.release.merge_usr else {})}


def _indexes_input(suite: str) -> str:
    return f"suite {suite} indexes"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _rootfs(stage: Stage, suites: dict[str, str], without_security: bool) -> Rootfs:
    return Rootfs(stage.key, stage.folder / "rootfs.tar", stage.folder / "packages.txt", suites, without_security)


def latest_cached(workspace: Workspace, wanted: list[Suite],
                  asked: dict[str, object]) -> tuple[Stage, Rootfs, datetime.datetime] | None:
    """The newest complete rootfs built for what the configuration asks, whatever the mirror's state was
    then, with when it was built."""
    mirror = {_indexes_input(suite.name) for suite in wanted}
    found: tuple[Stage, Rootfs, datetime.datetime] | None = None
    for stage in earlier(workspace.build, "rootfs"):
        if {name: value for name, value in stage.inputs.items() if name not in mirror} != as_recorded(asked):
            continue
        try:
            record = json.loads((stage.folder / RECORD).read_text())
            built = datetime.datetime.fromisoformat(record["built"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        rootfs = _rootfs(stage, dict(record.get("suites", {})), bool(record.get("without_security", False)))
        if not (rootfs.tarball.is_file() and rootfs.packages.is_file()):
            continue
        if found is None or built > found[2]:
            found = (stage, rootfs, built)
    return found


def _without_mirror(config: Config, workspace: Workspace, wanted: list[Suite], asked: dict[str, object],
                    error: Unreachable, force: bool) -> Rootfs:
    """A cached rootfs when the mirror cannot be asked whether it is current, if it is recent enough."""
    limit = config.debian.max_rootfs_age_days
    if force:
        raise SysvmError(f"rootfs: {error}; a forced rebuild needs the mirror")
    found = latest_cached(workspace, wanted, asked)
    if found is None:
        raise SysvmError(f"rootfs: {error} and there is no cached rootfs for these inputs")
    stage, rootfs, built = found
    age = (_now() - built).total_seconds() / 86400
    if age > limit:
        raise SysvmError(f"rootfs: {error} and the cached rootfs is {age:.1f} days old, "
                         f"more than debian.max_rootfs_age_days ({limit})")
    log.warning(f"rootfs: {error}; reusing the rootfs built {age:.1f} days ago "
                f"(debian.max_rootfs_age_days: {limit}): {stage.folder}")
    stage.mark_used()
    return rootfs


def plan(config: Config, workspace: Workspace, force: bool = False) -> tuple[Rootfs, Stage | None]:
    """(the rootfs this build needs, the stage that makes it): asks the mirror. When the mirror cannot be
    reached, a recent cached rootfs stands in and there is no stage to run (None)."""
    wanted = suites(config)
    if config.release.without_security:
        release = config.debian.release
        log.warning(f"building {release} WITHOUT {config.release.security_suite} "
                    f"(releases.{release}.without_security: true): the image gets no security updates")
    asked = rootfs_inputs(config, wanted)
    try:
        states = suite_states(config, wanted)
    except Unreachable as error:
        return _without_mirror(config, workspace, wanted, asked, error, force), None
    stage = Stage.of(workspace, "rootfs", {**asked, **{_indexes_input(name): state.indexes
                                                       for name, state in states.items()}})
    return _rootfs(stage, {name: state.date for name, state in states.items()},
                   config.release.without_security), stage


_INITRAMFS = "/usr/sbin/update-initramfs"
_DIVERT = 'chroot "$1" dpkg-divert --quiet --local --rename'


def mmdebstrap_command(config: Config, cache: Path, target: Path, manifest: Path) -> list[str]:
    command = ["mmdebstrap", "--variant=minbase", f"--architecture={config.debian.architecture}",
               "--include=" + ",".join(config.package_list()), "--skip=download/empty"]
    command += [f"--dpkgopt=path-exclude={glob}" for glob in config.path_excludes]
    command += [f"--dpkgopt=path-include={glob}" for glob in config.path_includes]
    if config.release.merge_usr:  # bookworm and later come merged through usr-is-merged
        links = " ".join(f'&& mkdir -p "$1"/usr/{folder} && ln -s usr/{folder} "$1"/{folder}'
                         for folder in config.arch.usr_merged_folders)
        command.append(f"--setup-hook=true {links}")
    quoted_cache, quoted_manifest = shlex.quote(str(cache)), shlex.quote(str(manifest))
    command += [
        # dpkg still creates the man page links of update-alternatives; their folder must exist.
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives "$1"/usr/share/man/man1',
        f"--setup-hook=sync-in {quoted_cache} /var/cache/apt/archives/",
        # The initramfs is made once, when every package is in: the kernel's postinst and the later trigger
        # would each make it (under qemu-user, minutes each, one process per kernel module).
        f"--essential-hook={_DIVERT} --add {_INITRAMFS} && ln -s /bin/true \"$1\"{_INITRAMFS}",
        f"--customize-hook=rm \"$1\"{_INITRAMFS} && {_DIVERT} --remove {_INITRAMFS}",
        '--customize-hook=chroot "$1" update-initramfs -c -k all',
        f"--customize-hook=sync-out /var/cache/apt/archives {quoted_cache}",
        '--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb',
        f"--customize-hook=chroot \"$1\" dpkg-query -W -f='{MANIFEST_FORMAT}' > {quoted_manifest}",
        config.debian.release, str(target), *apt_sources(config),
    ]
    return command


def check_emulation(config: Config, binfmt: Path = BINFMT) -> None:
    """A foreign architecture's maintainer scripts run through qemu-user: its binfmt handler must be there."""
    if config.debian.architecture == tools.host_architecture():
        return
    handler = binfmt / f"qemu-{config.arch.cloudstack_name}"
    if not handler.is_file() or "enabled" not in handler.read_text():
        raise SysvmError(f"debian.architecture {config.debian.architecture}: no binfmt handler {handler} to run "
                         "its programs on this host (apt-get install qemu-user-static binfmt-support; "
                         f"in a container, mount binfmt_misc on {binfmt} first)")


def build_rootfs(config: Config, workspace: Workspace, force: bool = False) -> Rootfs:
    result, stage = plan(config, workspace, force)
    if stage is None or stage.reuse(result.tarball, result.packages, stage.folder / RECORD, force=force):
        return result
    check_emulation(config)
    cache = workspace.cache / "apt" / f"{config.debian.release}-{config.debian.architecture}"
    cache.mkdir(parents=True, exist_ok=True)
    # mmdebstrap's chroot lives under output/build/tmp, not the caller's TMPDIR: should the build be killed
    # outright, the next one finds it there, unmounts its /proc and /sys and removes it.
    scratch = scratch_dir(workspace.build / "tmp", "rootfs-")
    with stage.building() as temporary:
        try:
            with log.waiting("mmdebstrap to install the packages"):
                run(mmdebstrap_command(config, cache, temporary / "rootfs.tar", temporary / "packages.txt"),
                    env={"TMPDIR": str(scratch)})
        finally:
            remove_tree(scratch)
        installed = (temporary / "packages.txt").read_text().splitlines()
        if not installed:
            raise SysvmError("mmdebstrap left an empty package list")
        # The suites' state was read just before mmdebstrap ran; a mirror update in between shows up as a
        # new key on the next build.
        record = {"built": _now().isoformat(timespec="seconds"), "suites": result.suites,
                  "without_security": result.without_security}
        (temporary / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    size = result.tarball.stat().st_size
    log.say(f"rootfs: {len(installed)} packages, {size / 2**20:.0f} MiB tarball")
    return result
