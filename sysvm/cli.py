"""The commands, once for every entry point: `sysvm <command>` and `python -m sysvm <command>` parse their
arguments here with argparse, tasks.py parses them with Invoke, and both call the command functions below.
Each loads the configuration, calls one function of the package and turns a SysvmError into one line and
an exit code.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import signal
import sys
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

from sysvm import config as config_module
from sysvm import tools
from sysvm.config import Config
from sysvm.errors import SysvmError
from sysvm.hypervisors import ARTIFACTS
from sysvm.process import end_children
from sysvm.workspace import Cleaned, Workspace

T = TypeVar("T")


def load_config(config_file: str | None, overrides: Sequence[str]) -> Config:
    return config_module.load(Path(config_file) if config_file else None, list(overrides))


def _interrupt(signum: int, frame: object) -> None:
    # End QEMU, Packer and every other child now: worker threads that own some would otherwise keep
    # them running until their own waits time out.
    end_children()
    raise KeyboardInterrupt


def stop(error: SysvmError) -> NoReturn:
    """End the program with the error's one line and its exit code."""
    print(f"sysvm: error: {error}", file=sys.stderr)
    raise SystemExit(error.exit_code)


def guarded(action: Callable[[], T]) -> T:
    """Run an action; a SysvmError ends the program with its one-line message and exit code.

    SIGTERM is turned into the same interruption as Ctrl-C, so that cleanup (temporary files, VMs)
    runs for both.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        return action()
    except SysvmError as error:
        stop(error)
    except KeyboardInterrupt:
        print("sysvm: interrupted; no unfinished file was left under a final name", file=sys.stderr)
        raise SystemExit(130) from None


# The options' help, for argparse below and for tasks.py.
HELP = {
    "config": "YAML file merged over the defaults (sysvm.yaml inside the sysvm package)",
    "set": "override one setting, KEY=VALUE (repeatable), e.g. --set debian.release=bullseye; VALUE is "
           "read as YAML, so quote a string that holds {, : or # "
           "(--set 'export.name_pattern=\"{version}-x\"')",
    "force": "rebuild even when the stage is up to date",
    "artifact": "artifact to boot (default: the KVM artifact of this configuration)",
    "role": "role to verify (repeatable; default: verify.roles)",
    "hypervisor": f"{', '.join(ARTIFACTS)}: boot that artifact (only KVM gets role tests)",
    "cloudstack": "a CloudStack source tree: start each role as a 4.17+ host does, with its scripts",
    "release": "a Debian release to build and verify (repeatable), e.g. --release bookworm --release trixie",
    "matrix_cloudstack": "a CloudStack source tree: also start each role as a 4.17+ host does, with its scripts",
    "all": "also remove the download cache (output/cache), and output/ itself once nothing else is in it",
    "old": "an artifact, or a release folder (output/artifacts)",
    "new": "an artifact or release folder of the same kind, to compare with OLD",
    "json": "print the report as JSON (for a pipeline) instead of text",
    "out": "the new release folder (must not exist, or be empty)",
    "folder": "a release folder (output/artifacts of one machine); two or more, of one version and configuration",
    "seed": "cloud-install-sys-tmplt options, e.g. -m /mnt/secondary -f FILE -h kvm",
}


# ----------------------------------------------------------------------------------------------- commands


def _configured(config_file: str, overrides: Sequence[str]) -> tuple[Config, Workspace]:
    config = load_config(config_file, overrides)
    workspace = Workspace.of(config)
    workspace.mark()  # only once the settings are good: bad ones write nothing
    return config, workspace


def render(config_file: str, overrides: Sequence[str], force: bool = False) -> None:
    """Render templates and overlay layers into output/build/render-<key>/tree."""
    from sysvm.build import render_only

    guarded(lambda: print(render_only(*_configured(config_file, overrides), force)))


def build(config_file: str, overrides: Sequence[str], force: bool = False) -> None:
    """Build the template: rootfs, disk, Packer provisioning and one artifact per hypervisor."""
    from sysvm.build import build as run_build

    guarded(lambda: run_build(*_configured(config_file, overrides), force))


def verify(config_file: str, overrides: Sequence[str], artifact: str = "", roles: Sequence[str] = (),
           hypervisor: str = "", cloudstack: str = "") -> None:
    """Boot artifacts in QEMU and test each role with testinfra; writes JUnit XML under output/verify."""
    from sysvm.verify import verify as run_verify

    guarded(lambda: run_verify(*_configured(config_file, overrides), artifact, list(roles), hypervisor, cloudstack))


def seed(arguments: Sequence[str]) -> int:
    """Install an artifact into secondary storage as cloud-install-sys-tmplt does (see sysvm-seed --help)."""
    from sysvm.seed import main as run_seed

    return run_seed(list(arguments))


def bench(config_file: str, overrides: Sequence[str]) -> None:
    """Cold build, no-change rebuild, overlay-only rebuild and verify; results in output/bench.json."""
    from sysvm.bench import bench as run_bench

    guarded(lambda: run_bench(*_configured(config_file, overrides)))


def matrix(config_file: str, overrides: Sequence[str], releases: Sequence[str], cloudstack: str = "") -> None:
    """Build and verify the template for each release, each in its own output folders; output/matrix.json."""
    from sysvm.matrix import matrix as run_matrix

    guarded(lambda: run_matrix(config_file, list(overrides), list(releases), cloudstack))


def diff(old: str, new: str, as_json: bool = False) -> int:
    """Compare two artifacts or two release folders: packages, files and artifact sizes; exit 0 when identical, 1 when not."""
    from sysvm.diff import compare

    def run_diff() -> int:
        workspace = Workspace()
        workspace.mark()
        report = compare(Path(old), Path(new), workspace.build / "tmp")
        print(report.as_json() if as_json else report.as_text(), end="")
        return 0 if report.identical else 1

    return guarded(run_diff)


def release(out: str, folders: Sequence[str]) -> None:
    """Assemble release folders built on several machines (one per architecture) into one publishable folder OUT."""
    from sysvm.release import release as run_release

    guarded(lambda: print(run_release(Path(out), [Path(folder) for folder in folders])))


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _say_cleaned(cleaned: Cleaned, root: Path) -> None:
    if cleaned.unmarked:
        print(f"clean: {root} has no marker (an older sysvm made it); every entry in it is one sysvm makes")
    for path, size in cleaned.removed:
        print(f"clean: removed {path} ({_size(size)})")
    if cleaned.kept_cache:
        print(f"clean: kept {cleaned.kept_cache} (the download cache; --all removes it)")
    for path in cleaned.kept:
        print(f"clean: kept {path} (not made by sysvm)")
    if cleaned.removed_folder:
        print(f"clean: removed {root} itself (nothing else was in it)")
    freed = sum(size for _, size in cleaned.removed)
    count = len(cleaned.removed)
    if count:
        print(f"clean: {count} {'entry' if count == 1 else 'entries'} removed, {_size(freed)} freed")
    elif not cleaned.removed_folder:
        print(f"clean: nothing of sysvm's to remove in {root}")


def clean(everything: bool = False) -> None:
    """Remove what sysvm made under output/ and nothing else (the download cache stays unless --all)."""
    from sysvm.workspace import clean as run_clean

    workspace = Workspace()
    guarded(lambda: _say_cleaned(run_clean(workspace, everything), workspace.root))


# The stages build checks the host tools of: all but verify.
BUILD_STAGES = [stage for stage in tools.STAGE_TOOLS if not stage.startswith("verify")]


def _validate(config_file: str, overrides: Sequence[str]) -> None:
    from sysvm.render import layers, render

    config = load_config(config_file, overrides)
    given = [*([f"-c {config_file}"] if config_file else []), *(f"--set {setting}" for setting in overrides)]
    print(f"validate: settings ok (the defaults{''.join(f', {option}' for option in given)})")
    tools.require(BUILD_STAGES, config)
    print(f"validate: host tools ok (for {', '.join(BUILD_STAGES)})")
    trees = {"cloudstack.scripts": config.cloudstack.scripts,
             "verify.cloudstack_scripts": config.verify.cloudstack_scripts}
    named = [f"{name} {path}" for name, path in trees.items() if path]
    print(f"validate: CloudStack trees ok ({', '.join(named) or 'none configured'})")
    print(f"validate: overlay layers ok ({', '.join([*layers(config), *config.overlay_layers])})")
    with tempfile.TemporaryDirectory(prefix="sysvm-validate-") as scratch:
        rendered = render(config, Workspace(Path(scratch) / "output"))
        print(f"validate: overlay tree ok ({len(rendered.entries())} files rendered into a temporary folder, "
              "now removed)")
    print("validate: ok")


def validate(config_file: str, overrides: Sequence[str]) -> None:
    """Check what a build would (settings, host tools, CloudStack trees, layers, templates); build nothing."""
    guarded(lambda: _validate(config_file, overrides))


def version() -> str:
    """sysvm's version: the installed package's, or where it is not installed, its source tree's."""
    try:
        return importlib.metadata.version("sysvm")
    except importlib.metadata.PackageNotFoundError:
        return _source_tree_version()


def _source_tree_version() -> str:
    try:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        project = tomllib.loads(pyproject.read_text())["project"]
    except (OSError, tomllib.TOMLDecodeError, KeyError):  # a bare copy of the package, outside its tree
        return "unknown"
    return str(project.get("version", "unknown")) if project.get("name") == "sysvm" else "unknown"


# ----------------------------------------------------------------------------------------------- argparse


def parser() -> argparse.ArgumentParser:
    """`sysvm COMMAND ...`; each command's parser names, in `run`, the call it makes."""
    options = argparse.ArgumentParser(prog="sysvm", description="Build, verify and seed Apache CloudStack system "
                                      "VM templates. output/ is made in the current directory.")
    options.add_argument("--version", action="version", version=f"sysvm {version()}")
    commands = options.add_subparsers(dest="command", required=True, metavar="COMMAND")
    configured = argparse.ArgumentParser(add_help=False)
    configured.add_argument("-c", "--config", default="", metavar="FILE", help=HELP["config"])
    configured.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=HELP["set"])
    staged = argparse.ArgumentParser(add_help=False, parents=[configured])
    staged.add_argument("--force", action="store_true", help=HELP["force"])

    def command(name: str, function: Callable[..., object], *parents: argparse.ArgumentParser,
                **settings: object) -> argparse.ArgumentParser:
        summary = (function.__doc__ or "").strip()
        return commands.add_parser(name, parents=list(parents), help=summary, description=summary, **settings)

    command("render", render, staged).set_defaults(run=lambda a: render(a.config, a.set, a.force))
    command("build", build, staged).set_defaults(run=lambda a: build(a.config, a.set, a.force))
    checked = command("verify", verify, configured)
    checked.add_argument("--artifact", default="", help=HELP["artifact"])
    checked.add_argument("--role", action="append", default=[], help=HELP["role"])
    checked.add_argument("--hypervisor", default="", help=HELP["hypervisor"])
    checked.add_argument("--cloudstack", default="", metavar="PATH", help=HELP["cloudstack"])
    checked.set_defaults(run=lambda a: verify(a.config, a.set, a.artifact, a.role, a.hypervisor, a.cloudstack))
    # seed's options are upstream's one-letter ones (-h is the hypervisor) and sysvm.seed parses them: with
    # "+" as this parser's only prefix, every argument after "seed" is handed over unread.
    seeding = command("seed", seed, add_help=False, prefix_chars="+")
    seeding.add_argument("arguments", nargs="*", metavar="OPTION", help=HELP["seed"])
    seeding.set_defaults(run=lambda a: seed(a.arguments))
    command("bench", bench, configured).set_defaults(run=lambda a: bench(a.config, a.set))
    releases = command("matrix", matrix, configured)
    releases.add_argument("--release", action="append", default=[], help=HELP["release"])
    releases.add_argument("--cloudstack", default="", metavar="PATH", help=HELP["matrix_cloudstack"])
    releases.set_defaults(run=lambda a: matrix(a.config, a.set, a.release, a.cloudstack))
    comparing = command("diff", diff)
    comparing.add_argument("old", metavar="OLD", help=HELP["old"])
    comparing.add_argument("new", metavar="NEW", help=HELP["new"])
    comparing.add_argument("--json", action="store_true", help=HELP["json"])
    comparing.set_defaults(run=lambda a: diff(a.old, a.new, a.json))
    assembling = command("release", release)
    assembling.add_argument("out", metavar="OUT", help=HELP["out"])
    assembling.add_argument("folders", metavar="DIR", nargs="+", help=HELP["folder"])
    assembling.set_defaults(run=lambda a: release(a.out, a.folders))
    command("validate", validate, configured).set_defaults(run=lambda a: validate(a.config, a.set))
    cleaning = command("clean", clean)
    cleaning.add_argument("--all", action="store_true", help=HELP["all"])
    cleaning.set_defaults(run=lambda a: clean(a.all))
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """The `sysvm` console script and `python -m sysvm`; the exit code of the command."""
    args = parser().parse_args(argv)
    return args.run(args) or 0
