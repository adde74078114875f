"""CloudStack's own system VM scripts, taken from a CloudStack source tree and packed as CloudStack packs them.

The tree is an input, never part of this project. `cloud-scripts.tgz` follows systemvm/pom.xml: every
file under systemvm/debian/ plus scripts/util/keystore-* as opt/cloud/bin/keystore-*, mode 755, except
files whose name starts with "log" and files under a logrotate.d folder, mode 644. `agent.zip` follows
systemvm/systemvm-agent-descriptor.xml (the agent's jars come from a Maven build and are not in a source
tree). Both are packed reproducibly: the same tree gives the same bytes.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sysvm.errors import SysvmError
from sysvm.fsutil import atomic_write, hash_file

SCRIPTS_NAME = "cloud-scripts.tgz"
AGENT_NAME = "agent.zip"
PATCH_NAME = "patch-sysvms.sh"
# (folder under systemvm/agent or the tree, folder in the zip, file name patterns; empty: every file)
AGENT_LAYOUT = (
    ("scripts/util", "scripts/util", ("keystore*",)),
    ("scripts/storage/secondary", "scripts/storage/secondary", ()),
    ("systemvm/agent/scripts", "", ()),
    ("systemvm/agent/conf", "conf", ("log4j-cloud.xml", "consoleproxy.properties", "agent.properties",
                                     "uefi.properties")),
    ("systemvm/agent/images", "images", ("*.jpg", "*.gif", "*.png", "*.cur")),
    ("systemvm/agent/js", "js", ("*.js",)),
    ("systemvm/agent/ui", "ui", ("*.ftl",)),
    ("systemvm/agent/css", "css", ("*.css",)),
    ("systemvm/agent/certs", "certs", ("*.keystore", "*.crt", "*.key")),
    ("systemvm/agent/noVNC", "noVNC", ("**/*",)),
    ("systemvm/agent/packages", "packages", ("**/*",)),
)
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class CloudStackTree:
    """A CloudStack source tree: `root` holds systemvm/ and scripts/."""

    root: Path

    @property
    def debian(self) -> Path:
        return self.root / "systemvm" / "debian"

    @property
    def patch_script(self) -> Path:
        return self.root / "systemvm" / PATCH_NAME

    def keystore_scripts(self) -> list[Path]:
        return sorted((self.root / "scripts" / "util").glob("keystore-*"))


def locate(path: str) -> CloudStackTree:
    """A CloudStack source tree, given as its root or its systemvm/ folder."""
    given = Path(path).expanduser()
    for root in (given, given.parent):
        if (root / "systemvm" / "debian" / "opt" / "cloud" / "bin" / "setup" / "bootstrap.sh").is_file():
            tree = CloudStackTree(root.resolve())
            if not tree.keystore_scripts():
                raise SysvmError(f"{path}: no scripts/util/keystore-* beside systemvm/ (expected a CloudStack "
                                 "source tree)")
            return tree
    raise SysvmError(f"{path}: not a CloudStack source tree or its systemvm/ folder (expected "
                     "systemvm/debian/opt/cloud/bin/setup/bootstrap.sh in it)")


def _scripts_mode(relative: str) -> int:
    parts = relative.split("/")
    return 0o644 if parts[-1].startswith("log") or "logrotate.d" in parts[:-1] else 0o755


def _tar_entry(name: str, mode: int, kind: bytes = tarfile.REGTYPE, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size = kind, mode, size
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def scripts_entries(tree: CloudStackTree) -> dict[str, Path | None]:
    """Path in the archive → source file (None for a folder), in archive order."""
    entries: dict[str, Path | None] = {}
    for source in sorted(tree.debian.rglob("*")):
        entries[source.relative_to(tree.debian).as_posix()] = None if source.is_dir() else source
    for script in tree.keystore_scripts():
        entries[f"opt/cloud/bin/{script.name}"] = script
    return dict(sorted(entries.items()))


def pack_scripts(tree: CloudStackTree, target: Path) -> str:
    """Write cloud-scripts.tgz; returns its sha512 (what the image records as the scripts' signature)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, source in scripts_entries(tree).items():
            if source is None:
                tar.addfile(_tar_entry(name, 0o755, tarfile.DIRTYPE))
            elif source.is_symlink():
                raise SysvmError(f"{source}: symbolic links are not packed by CloudStack's build")
            else:
                data = source.read_bytes()
                tar.addfile(_tar_entry(name, _scripts_mode(name), size=len(data)), io.BytesIO(data))
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0) as stream:
        stream.write(buffer.getvalue())
    atomic_write(target, compressed.getvalue())
    return hash_file(target, "sha512")


def _agent_sources(tree: CloudStackTree) -> list[tuple[str, Path]]:
    chosen: dict[str, Path] = {}
    for folder, prefix, patterns in AGENT_LAYOUT:
        base = tree.root / folder
        if not base.is_dir():
            continue
        found = set()
        for pattern in patterns or ("*",):
            found |= {path for path in base.glob(pattern) if path.is_file()}
        for path in sorted(found):
            chosen[f"{prefix}/{path.relative_to(base).as_posix()}".lstrip("/")] = path
    return sorted(chosen.items())


def pack_agent(tree: CloudStackTree, target: Path) -> None:
    """Write agent.zip: scripts at the top, conf/, certs/, ui/, packages/ ... (read-only, as upstream)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, source in _agent_sources(tree):
            info = zipfile.ZipInfo(name, ZIP_EPOCH)
            mode = 0o644 if name.startswith("packages/") else 0o555
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, source.read_bytes())
    atomic_write(target, buffer.getvalue())
