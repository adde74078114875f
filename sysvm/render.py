"""Render stage: Jinja2 templates plus static overlay layers become one rendered tree with a manifest."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import jinja2

from sysvm import log
from sysvm.cache import hash_tree
from sysvm.cloudstack import CloudStackTree, locate, pack_scripts
from sysvm.config import Config
from sysvm.errors import SysvmError
from sysvm.fsutil import layer_folder_problem, remove_tree, sha256_file, walk
from sysvm.resources import resource
from sysvm.stage import Stage
from sysvm.workspace import Workspace

TEMPLATES = resource("templates")
OVERLAYS = resource("overlays")
TREE = "tree"  # the rendered tree's folder in the stage folder
TEMPLATE_SUFFIX = ".j2"
PARTIAL_SUFFIX = ".inc.j2"
SSH_PORT = 3922
AGENT_PORT = 8250
SIGNATURE_PATH = "var/cache/cloud/cloud-scripts-signature"
BAKED_SCRIPTS_PATH = "usr/share/cloud/cloud-scripts.tgz"
# Folders whose files make up "the cloud scripts" that the router version check compares.
SIGNED_FOLDERS = ("opt/cloud", "root/health_checks", "usr/local/cloud/systemvm")
CACHES = frozenset({"__pycache__"})  # written by importing a layer's code; never copied
ROOT_OWNER = (0, 0)  # sysvm's own layers are root's in the image, whoever owns the checkout
# The files render makes itself (the signature, the baked archive) and the folders it adds for them.
GENERATED_FILE_MODE = 0o644
GENERATED_FOLDER_MODE = 0o755
# debugfs, which writes the tree into the image, reads its script a line of at most 8191 bytes at a time
# (a longer one goes on as a new line), ends a line at a newline or carriage return, splits it at spaces
# and tabs, groups words with double quotes, runs a line that starts with '!' in a shell and skips one that
# starts with '#'. A path or link target without white space, control characters or quotes, and of at most
# MAX_PATH_BYTES (two of them make a command line), can therefore neither split a word nor start a line.
# Backslashes are refused too, although debugfs 1.47 takes them literally: no name in the image needs one.
MAX_PATH_BYTES = 4000
SHOWN_LENGTH = 100  # characters of a refused path or link target that its message shows
DEBUGFS_SPECIAL = frozenset('"\\')


@dataclass(frozen=True)
class RenderedTree:
    key: str
    tree: Path
    manifest: Path

    def entries(self) -> list[dict[str, str | int]]:
        return json.loads(self.manifest.read_text())["files"]

    def signature(self) -> str:
        """What get_template_version.sh reports after '&' until a host hands over other scripts."""
        return (self.tree / SIGNATURE_PATH).read_text().strip()

    @property
    def baked_scripts(self) -> Path | None:
        archive = self.tree / BAKED_SCRIPTS_PATH
        # Only render's own archive counts: a layer's link there, or above it, is not followed.
        inside = [path for path in (archive, *archive.parents) if path.is_relative_to(self.tree)]
        through_link = any(path.is_symlink() for path in inside)
        return archive if archive.is_file() and not through_link else None


@dataclass(frozen=True)
class Layer:
    """A source of the rendered tree: how messages name it, its folder (None for the files render makes
    itself), and the owner its entries get in the image (None: each keeps its own, as a user's do)."""

    name: str
    root: Path | None
    owner: tuple[int, int] | None = ROOT_OWNER

    def owner_of(self, info: os.stat_result) -> tuple[int, int]:
        return self.owner if self.owner is not None else (info.st_uid, info.st_gid)

    def folder(self, relative: str) -> tuple[int, tuple[int, int]]:
        """The mode and owner of a folder this layer adds to the tree: its own folder's."""
        if self.root is None:
            return GENERATED_FOLDER_MODE, ROOT_OWNER
        info = os.lstat(self.root / relative)
        return stat.S_IMODE(info.st_mode), self.owner_of(info)


GENERATED = Layer("render", None)


def build_date(config: Config) -> str:
    if config.cloudstack.build_date:
        return config.cloudstack.build_date
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    if epoch.isdigit():
        return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return ""


def layers(config: Config) -> list[str]:
    """common first, then the layer of every configured role that has one."""
    names = ["common"]
    for role in config.roles:
        layer = "router" if role in ("vpcrouter", "dhcpsrvr") else role
        if layer not in names:
            names.append(layer)
    return names


def context(config: Config) -> dict[str, object]:
    return {
        "version": config.cloudstack.version,
        "build_date": build_date(config),
        "release_name": config.debian.release,
        "release": dataclasses.asdict(config.release),
        "consoleproxy": dataclasses.asdict(config.consoleproxy),
        "health_checks": dataclasses.asdict(config.health_checks),
        "roles": list(config.roles),
        "services": config.services.image_declaration(),  # what the boot-time setup enables per role
        "ssh_port": SSH_PORT,
        "agent_port": AGENT_PORT,
        "agent_heap_mib": 128,
    }


def _extra_layers(config: Config) -> list[Layer]:
    # Relative to the current directory, as config checks them; each entry keeps its own owner.
    return [Layer(entry, Path(entry), owner=None) for entry in config.overlay_layers]


def _baked_scripts(config: Config) -> CloudStackTree | None:
    return locate(config.cloudstack.scripts) if config.cloudstack.scripts else None


def render_inputs(config: Config) -> dict[str, object]:
    """What the rendered tree is made from: the templates' values under the names the templates use, the
    layers in order, and the hash of each folder read, under its own name (`templates/common/`)."""
    baked = _baked_scripts(config)
    trees: dict[str, list[Path]] = {}
    for name in layers(config):
        trees[f"templates/{name}/"] = [TEMPLATES / name]
        trees[f"overlays/{name}/"] = [OVERLAYS / name]
    if baked:
        trees["cloudstack.scripts systemvm/debian/"] = [baked.debian]
        trees["cloudstack.scripts scripts/util/keystore-*"] = baked.keystore_scripts()
    hashes = {name: hash_tree(*folders) for name, folders in trees.items()}
    for layer in config.overlay_layers:  # their owners go into the image, so they count
        hashes[f"{layer.rstrip('/')}/"] = hash_tree(Path(layer), owners=True)
    return {**context(config), "layers": layers(config), "overlay_layers": config.overlay_layers, "render.py TREE": TREE,
            "cloudstack.scripts": str(baked.root) if baked else "", **hashes}


def path_problem(text: str) -> str | None:
    """Why a path or link target cannot go into the rendered tree (and so into debugfs's script), or None."""
    for character in text:
        if unicodedata.category(character) == "Cs":  # how Python holds a name's bytes that are not UTF-8
            return "not UTF-8"
        if character.isspace() or unicodedata.category(character) == "Cc" or character in DEBUGFS_SPECIAL:
            return (f"{character!r} is not allowed (paths and link targets carry no white space, control "
                    "characters, double quotes or backslashes)")
    if len(text.encode()) > MAX_PATH_BYTES:
        return f"longer than {MAX_PATH_BYTES} bytes"
    return None


def _shown(text: str) -> str:
    """A path or link target for a message: as it is, or quoted with its control characters escaped when it
    could be misread (white space, characters that do not print), and cut short when long."""
    if len(text) > SHOWN_LENGTH:
        return f"{text[:SHOWN_LENGTH]!r}... ({len(text.encode())} bytes)"
    return text if text.isprintable() and not any(c.isspace() for c in text) else repr(text)


def _kind(info: os.stat_result) -> str:
    return {stat.S_IFLNK: "symlink", stat.S_IFREG: "file", stat.S_IFDIR: "folder", stat.S_IFIFO: "fifo",
            stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
            stat.S_IFBLK: "block device"}.get(stat.S_IFMT(info.st_mode), "special file")


class TreeWriter:
    """Writes layers into the rendered tree without ever going through a symlink, in the tree or out of it.
    Every folder on the way to an entry is a real folder of the tree (a missing one is made with the layer's
    own folder's mode and owner; one that exists keeps its own), and what an earlier layer left at the
    entry's own path is removed first, so no link is ever opened. Paths and link targets are checked."""

    def __init__(self, tree: Path) -> None:
        self.tree = tree

    def folders(self, layer: Layer, relative: str, depth: int) -> Path:
        """The tree's folder made of the first `depth` parts of `relative`, each of them a real folder."""
        self._check(layer, relative)
        parts = relative.split("/")
        folder = self.tree
        for count in range(1, depth + 1):
            folder = folder / parts[count - 1]
            try:
                info = os.lstat(folder)
            except FileNotFoundError:
                mode, owner = layer.folder("/".join(parts[:count]))
                os.mkdir(folder, 0o700)
                os.chown(folder, *owner)
                os.chmod(folder, mode)  # after chown, which clears a set-group-ID bit
                continue
            if not stat.S_ISDIR(info.st_mode):
                noun = "link" if stat.S_ISLNK(info.st_mode) else _kind(info)
                raise SysvmError(f"{layer.name}: {relative}: '{'/'.join(parts[:count])}' is a {_kind(info)} "
                                 f"(from an earlier layer); a layer cannot write beneath a {noun}")
        return folder

    def _clear(self, layer: Layer, relative: str) -> Path:
        target = self.folders(layer, relative, relative.count("/")) / relative.rsplit("/", 1)[-1]
        try:
            info = os.lstat(target)
        except FileNotFoundError:
            return target
        if stat.S_ISDIR(info.st_mode):
            raise SysvmError(f"{layer.name}: {relative}: an earlier layer made it a folder; "
                             "a layer cannot put a file or link in its place")
        os.unlink(target)
        return target

    def file(self, layer: Layer, relative: str, content: BinaryIO, mode: int, owner: tuple[int, int]) -> None:
        target = self._clear(layer, relative)
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with open(descriptor, "wb") as handle:
            shutil.copyfileobj(content, handle)
            handle.flush()
            os.fchown(handle.fileno(), *owner)
            os.fchmod(handle.fileno(), mode)  # after chown, which clears set-user-ID and set-group-ID bits

    def link(self, layer: Layer, relative: str, target: str, owner: tuple[int, int]) -> None:
        self._check(layer, relative)
        if (problem := path_problem(target)) is not None:
            raise SysvmError(f"{layer.name}: {relative}: link target {_shown(target)}: {problem}")
        path = self._clear(layer, relative)
        os.symlink(target, path)
        os.chown(path, *owner, follow_symlinks=False)

    @staticmethod
    def _check(layer: Layer, relative: str) -> None:
        if (problem := path_problem(f"/{relative}")) is not None:  # as the image names it
            raise SysvmError(f"{layer.name}: {_shown(relative)}: {problem}")


def _render_templates(environment: jinja2.Environment, name: str, values: dict[str, object],
                      writer: TreeWriter) -> None:
    source_root = TEMPLATES / name
    if not source_root.is_dir():
        return
    layer = Layer(str(source_root), source_root)
    for relative, info in walk(source_root, CACHES):
        wanted = relative.endswith(TEMPLATE_SUFFIX) and not relative.endswith(PARTIAL_SUFFIX)
        if not wanted or not stat.S_ISREG(info.st_mode):
            continue
        source = source_root / relative
        try:
            text = environment.get_template(f"{name}/{relative}").render(values)
        except jinja2.UndefinedError as error:
            raise SysvmError(f"{source}: undefined template variable: {error.message}") from error
        except jinja2.TemplateSyntaxError as error:
            raise SysvmError(f"{source}:{error.lineno}: template syntax error: {error.message}") from error
        if not text.strip():  # a file the configuration does not need renders to nothing
            continue
        writer.file(layer, relative[: -len(TEMPLATE_SUFFIX)], io.BytesIO(text.encode()),
                    stat.S_IMODE(info.st_mode), ROOT_OWNER)


def _copy_layer(layer: Layer, writer: TreeWriter) -> None:
    """Copy a layer's folders, files and links into the tree, each with its exact mode (and owner, see Layer).
    A folder is made when something goes into it, so that a clash is named by what would be written."""
    if layer.root is None or not layer.root.is_dir():
        return
    relative = ""
    try:
        entries = list(walk(layer.root, CACHES))
        for index, (relative, info) in enumerate(entries):
            if stat.S_ISDIR(info.st_mode):
                following = entries[index + 1][0] if index + 1 < len(entries) else ""
                if not following.startswith(f"{relative}/"):  # empty: made here, as nothing goes into it
                    writer.folders(layer, relative, relative.count("/") + 1)
            elif stat.S_ISLNK(info.st_mode):
                writer.link(layer, relative, os.readlink(layer.root / relative), layer.owner_of(info))
            elif stat.S_ISREG(info.st_mode):
                # O_NOFOLLOW and O_NONBLOCK: a file swapped for a link or a fifo since it was listed is not
                # opened through the link, nor waited on.
                descriptor = os.open(layer.root / relative, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                with open(descriptor, "rb") as source:
                    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                        raise SysvmError(f"{layer.name}: {_shown(relative)}: changed while it was read")
                    writer.file(layer, relative, source, stat.S_IMODE(info.st_mode), layer.owner_of(info))
            else:
                raise SysvmError(f"{layer.name}: {_shown(relative)}: a {_kind(info)} cannot go into the "
                                 "image (a layer holds files, folders and symlinks)")
    except OSError as error:
        raise SysvmError(f"{layer.name}: {_shown(relative) or '.'}: {error.strerror}") from error


def scripts_signature(tree: Path) -> str:
    """The image's own scripts' signature, in the form of CloudStack's (a sha512 in hex)."""
    digest = hashlib.sha512()
    signed = tuple(f"{folder}/" for folder in SIGNED_FOLDERS)
    for relative, info in walk(tree):
        if stat.S_ISREG(info.st_mode) and relative.startswith(signed):
            digest.update(relative.encode() + b"\0" + (tree / relative).read_bytes())
    return digest.hexdigest()


def bake_scripts(cloudstack: CloudStackTree, writer: TreeWriter, scratch: Path) -> str:
    """As upstream's template: CloudStack's cloud-scripts.tgz kept in /usr/share/cloud and unpacked over
    the image's own layers. Returns the tgz's sha512, the signature get_template_version.sh reports."""
    archive, unpacked = scratch / "cloud-scripts.tgz", scratch / "cloud-scripts"
    checksum = pack_scripts(cloudstack, archive)  # in scratch, then copied in as any layer is
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="tar")
    _copy_layer(Layer(f"cloudstack.scripts {cloudstack.root}", unpacked), writer)
    with archive.open("rb") as content:
        writer.file(GENERATED, BAKED_SCRIPTS_PATH, content, GENERATED_FILE_MODE, ROOT_OWNER)
    remove_tree(scratch)
    log.say(f"render: CloudStack's scripts from {cloudstack.root} baked in (sha512 {checksum[:16]}...)")
    return checksum


def _manifest(tree: Path) -> list[dict[str, str | int]]:
    """Every folder, file and link of the tree with its mode and owner, as the overlay stage writes them."""
    entries: list[dict[str, str | int]] = []
    for relative, info in walk(tree):
        entry: dict[str, str | int] = {"path": f"/{relative}", "mode": f"{stat.S_IMODE(info.st_mode):04o}",
                                       "uid": info.st_uid, "gid": info.st_gid}
        if stat.S_ISLNK(info.st_mode):
            entry.update(type="link", target=os.readlink(tree / relative))
        elif stat.S_ISDIR(info.st_mode):
            entry.update(type="folder")
        else:
            entry.update(type="file", sha256=sha256_file(tree / relative))
        entries.append(entry)
    return entries


def _check_layer_folders(config: Config, workspace: Workspace) -> None:
    """Config checks each layer folder; checked again where it is read, as a caller may have changed the
    configuration since. A layer holding the build folder would also be copied into itself, artifacts and
    all."""
    build = Path(os.path.realpath(workspace.build))
    for index, layer in enumerate(config.overlay_layers):
        if (problem := layer_folder_problem(layer)) is not None:
            raise SysvmError(f"overlay_layers.{index}: {problem}")
        folder = Path(os.path.realpath(layer))
        if build.is_relative_to(folder) or folder.is_relative_to(build):
            where = "holds" if build.is_relative_to(folder) else "lies in"
            raise SysvmError(f"overlay_layers.{index}: {layer!r} resolves to {folder}, which {where} sysvm's "
                             f"build folder {build}: a layer must be a folder of its own")


def render(config: Config, workspace: Workspace, force: bool = False) -> RenderedTree:
    _check_layer_folders(config, workspace)
    stage = Stage.of(workspace, "render", render_inputs(config))
    rendered = RenderedTree(stage.key, stage.folder / TREE, stage.folder / "manifest.json")
    if stage.reuse(rendered.manifest, force=force):
        return rendered
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False,
    )
    values = context(config)
    with stage.building() as temporary:
        tree = temporary / TREE
        tree.mkdir()
        writer = TreeWriter(tree)
        for name in layers(config):
            _render_templates(environment, name, values, writer)
            _copy_layer(Layer(str(OVERLAYS / name), OVERLAYS / name), writer)
        for extra in _extra_layers(config):
            _copy_layer(extra, writer)
        baked = _baked_scripts(config)
        signature = bake_scripts(baked, writer, temporary / "scratch") if baked else scripts_signature(tree)
        writer.file(GENERATED, SIGNATURE_PATH, io.BytesIO(f"{signature}\n".encode()), GENERATED_FILE_MODE,
                    ROOT_OWNER)
        document = {"key": stage.key, "release": config.debian.release, "layers": layers(config),
                    "files": _manifest(tree)}
        (temporary / "manifest.json").write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    log.say(f"render: {len(rendered.entries())} folders, files and links in {rendered.tree}")
    return rendered
