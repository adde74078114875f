"""Render stage: Jinja2 templates plus static overlay layers become one rendered tree with a manifest."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import jinja2

from sysvm import log
from sysvm.cache import hash_tree
from sysvm.cloudstack import CloudStackTree, locate, pack_scripts
from sysvm.config import Config
from sysvm.errors import SysvmError
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


@dataclass(frozen=True)
class RenderedTree:
    key: str
    tree: Path
    manifest: Path

    def entries(self) -> list[dict[str, str]]:
        return json.loads(self.manifest.read_text())["files"]

    def signature(self) -> str:
        """What get_template_version.sh reports after '&' until a host hands over other scripts."""
        return (self.tree / SIGNATURE_PATH).read_text().strip()

    @property
    def baked_scripts(self) -> Path | None:
        archive = self.tree / BAKED_SCRIPTS_PATH
        return archive if archive.is_file() else None


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


def _extra_layers(config: Config) -> list[Path]:
    return [Path(layer) for layer in config.overlay_layers]  # relative to the current directory, as config checks


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
    for layer, folder in zip(config.overlay_layers, _extra_layers(config), strict=True):
        trees[f"{layer.rstrip('/')}/"] = [folder]
    if baked:
        trees["cloudstack.scripts systemvm/debian/"] = [baked.debian]
        trees["cloudstack.scripts scripts/util/keystore-*"] = baked.keystore_scripts()
    return {**context(config), "layers": layers(config), "overlay_layers": config.overlay_layers, "render.py TREE": TREE,
            "cloudstack.scripts": str(baked.root) if baked else "",
            **{name: hash_tree(*folders) for name, folders in trees.items()}}


def _render_templates(environment: jinja2.Environment, layer: str, values: dict[str, object], tree: Path) -> None:
    source_root = TEMPLATES / layer
    if not source_root.is_dir():
        return
    for source in sorted(source_root.rglob(f"*{TEMPLATE_SUFFIX}")):
        if source.name.endswith(PARTIAL_SUFFIX):
            continue
        relative = source.relative_to(source_root).as_posix()[: -len(TEMPLATE_SUFFIX)]
        name = source.relative_to(TEMPLATES).as_posix()
        try:
            text = environment.get_template(name).render(values)
        except jinja2.UndefinedError as error:
            raise SysvmError(f"{source}: undefined template variable: {error.message}") from error
        except jinja2.TemplateSyntaxError as error:
            raise SysvmError(f"{source}:{error.lineno}: template syntax error: {error.message}") from error
        target = tree / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        target.chmod(source.stat().st_mode & 0o755 | 0o644)


def _copy_layer(source_root: Path, tree: Path) -> None:
    if not source_root.is_dir():
        return
    for source in sorted(source_root.rglob("*")):
        if "__pycache__" in source.parts:
            continue
        target = tree / source.relative_to(source_root)
        if source.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                target.unlink()
            target.symlink_to(os.readlink(source))
        elif source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            target.chmod(source.stat().st_mode & 0o755 | 0o644)


def scripts_signature(tree: Path) -> str:
    """The image's own scripts' signature, in the form of CloudStack's (a sha512 in hex)."""
    digest = hashlib.sha512()
    for folder in SIGNED_FOLDERS:
        for path in sorted((tree / folder).rglob("*")) if (tree / folder).is_dir() else []:
            if path.is_file() and not path.is_symlink():
                digest.update(path.relative_to(tree).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def bake_scripts(cloudstack: CloudStackTree, tree: Path) -> str:
    """As upstream's template: CloudStack's cloud-scripts.tgz kept in /usr/share/cloud and unpacked over
    the image's own layers. Returns the tgz's sha512, the signature get_template_version.sh reports."""
    archive = tree / BAKED_SCRIPTS_PATH
    archive.parent.mkdir(parents=True, exist_ok=True)
    checksum = pack_scripts(cloudstack, archive)
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="tar")
    log.say(f"render: CloudStack's scripts from {cloudstack.root} baked in (sha512 {checksum[:16]}...)")
    return checksum


def _manifest(tree: Path) -> list[dict[str, str]]:
    entries = []
    for path in sorted(tree.rglob("*")):
        relative = "/" + path.relative_to(tree).as_posix()
        if path.is_symlink():
            entries.append({"path": relative, "type": "link", "target": os.readlink(path)})
        elif path.is_file():
            mode = f"{path.stat().st_mode & 0o7777:04o}"
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            entries.append({"path": relative, "type": "file", "mode": mode, "sha256": sha})
    return entries


def render(config: Config, workspace: Workspace, force: bool = False) -> RenderedTree:
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
        for layer in layers(config):
            _render_templates(environment, layer, values, tree)
            _copy_layer(OVERLAYS / layer, tree)
        for extra in _extra_layers(config):
            _copy_layer(extra, tree)
        baked = _baked_scripts(config)
        signature = tree / SIGNATURE_PATH
        signature.parent.mkdir(parents=True, exist_ok=True)
        signature.write_text((bake_scripts(baked, tree) if baked else scripts_signature(tree)) + "\n")
        document = {"key": stage.key, "release": config.debian.release, "layers": layers(config),
                    "files": _manifest(tree)}
        (temporary / "manifest.json").write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    log.say(f"render: {len(rendered.entries())} files in {rendered.tree}")
    return rendered
