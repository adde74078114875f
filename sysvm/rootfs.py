"""rootfs stage: mmdebstrap builds the Debian root filesystem natively, with an apt cache reused across builds."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from sysvm import log
from sysvm.cache import stage_key
from sysvm.config import Config
from sysvm.errors import SysvmError
from sysvm.fsutil import atomic_path
from sysvm.run import run
from sysvm.workspace import Workspace

HOST_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
MANIFEST_FORMAT = "${Package}\\t${Version}\\t${Architecture}\\n"


@dataclass(frozen=True)
class Rootfs:
    key: str
    tarball: Path
    packages: Path  # name, version, architecture of every installed package, tab-separated


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


def mirrors(config: Config, sources: tuple[Path, ...] = HOST_SOURCES) -> tuple[str, str]:
    """(mirror, security mirror): explicit settings, else the release's default, else the host's apt."""
    uris = _host_uris(sources)

    def pick(setting: str, release_default: str, suffix: str, key: str) -> str:
        if setting != "auto":
            return setting
        if release_default:
            return release_default
        for uri in uris:
            if uri.rstrip("/").endswith(suffix):
                return uri.rstrip("/")
        raise SysvmError(f"debian.{key}: 'auto' found no Debian mirror in the host's apt sources; set it explicitly")

    mirror = pick(config.debian.mirror, config.release.mirror, "/debian", "mirror")
    security = pick(config.debian.security_mirror, config.release.security_mirror, "/debian-security",
                    "security_mirror")
    return mirror, security


def apt_sources(config: Config, sources: tuple[Path, ...] = HOST_SOURCES) -> list[str]:
    mirror, security = mirrors(config, sources)
    release = config.debian.release
    lines = [f"deb {mirror} {release} main", f"deb {security} {config.release.security_suite} main"]
    if release != "buster":
        lines.insert(1, f"deb {mirror} {release}-updates main")
    return lines


def rootfs_key(config: Config) -> str:
    return stage_key("rootfs", config.debian.release, config.debian.architecture, apt_sources(config),
                     config.package_list(), config.path_excludes, config.path_includes)


def mmdebstrap_command(config: Config, cache: Path, target: Path, manifest: Path) -> list[str]:
    command = ["mmdebstrap", "--variant=minbase", f"--architecture={config.debian.architecture}",
               "--include=" + ",".join(config.package_list()), "--skip=download/empty"]
    command += [f"--dpkgopt=path-exclude={glob}" for glob in config.path_excludes]
    command += [f"--dpkgopt=path-include={glob}" for glob in config.path_includes]
    quoted_cache, quoted_manifest = shlex.quote(str(cache)), shlex.quote(str(manifest))
    command += [
        # dpkg still creates the man page links of update-alternatives; their folder must exist.
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives "$1"/usr/share/man/man1',
        f"--setup-hook=sync-in {quoted_cache} /var/cache/apt/archives/",
        f"--customize-hook=sync-out /var/cache/apt/archives {quoted_cache}",
        '--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb',
        f"--customize-hook=chroot \"$1\" dpkg-query -W -f='{MANIFEST_FORMAT}' > {quoted_manifest}",
        config.debian.release, str(target), *apt_sources(config),
    ]
    return command


def build_rootfs(config: Config, workspace: Workspace, force: bool = False) -> Rootfs:
    key = rootfs_key(config)
    folder = workspace.stage_dir("rootfs", key)
    result = Rootfs(key, folder / "rootfs.tar", folder / "packages.txt")
    if workspace.reusable("rootfs", result.tarball, result.packages, force=force):
        return result
    cache = workspace.cache / "apt" / f"{config.debian.release}-{config.debian.architecture}"
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder) as temporary:
        temporary.mkdir(parents=True)
        with log.waiting("mmdebstrap to install the packages"):
            run(mmdebstrap_command(config, cache, temporary / "rootfs.tar", temporary / "packages.txt"))
        installed = (temporary / "packages.txt").read_text().splitlines()
        if not installed:
            raise SysvmError("mmdebstrap left an empty package list")
    size = result.tarball.stat().st_size
    log.say(f"    rootfs: {len(installed)} packages, {size / 2**20:.0f} MiB tarball")
    return result

