"""Invoke tasks: the commands of sysvm/cli.py (also `sysvm <command>`), with Invoke's parsing, plus
`test`, `faults` and `version`."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

from invoke import Context, task

from sysvm import cli
from sysvm.cli import HELP
from sysvm.errors import SysvmError
from sysvm.workspace import Workspace

CHECKOUT = Path(__file__).resolve().parent

CONFIG_HELP = {"config": HELP["config"], "set_": HELP["set"]}
STAGE_HELP = {**CONFIG_HELP, "force": HELP["force"]}


def summary(command: Callable[..., object]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a task the docstring of its command, so `invoke --list` and `sysvm --help` say the same."""

    def take(body: Callable[..., None]) -> Callable[..., None]:
        body.__doc__ = command.__doc__
        return body

    return take


@task(iterable=["set_"], help=STAGE_HELP)
@summary(cli.render)
def render(c: Context, config: str = "", set_: list[str] | None = None, force: bool = False) -> None:
    cli.render(config, set_ or [], force)


@task(iterable=["set_"], help=STAGE_HELP)
@summary(cli.build)
def build(c: Context, config: str = "", set_: list[str] | None = None, force: bool = False) -> None:
    cli.build(config, set_ or [], force)


@task(iterable=["set_", "role"], help={**CONFIG_HELP, **{name: HELP[name] for name in
                                                           ("artifact", "role", "hypervisor", "cloudstack")}})
@summary(cli.verify)
def verify(c: Context, config: str = "", set_: list[str] | None = None, artifact: str = "",
           role: list[str] | None = None, hypervisor: str = "", cloudstack: str = "") -> None:
    cli.verify(config, set_ or [], artifact, role or [], hypervisor, cloudstack)


@task(help={"args": f"{HELP['seed']}, quoted as one argument"})
@summary(cli.seed)
def seed(c: Context, args: str = "") -> None:
    try:
        arguments = shlex.split(args)
    except ValueError as error:  # an unbalanced quote or a trailing backslash
        reason = str(error).lower()
        cli.stop(SysvmError(f"--args: {reason} in {args!r} (quote seed's options as a shell would)"))
    raise SystemExit(cli.seed(arguments))


@task(iterable=["set_"], help=CONFIG_HELP)
@summary(cli.bench)
def bench(c: Context, config: str = "", set_: list[str] | None = None) -> None:
    cli.bench(config, set_ or [])


@task(iterable=["set_", "release"], help={**CONFIG_HELP, "release": HELP["release"],
                                          "cloudstack": HELP["matrix_cloudstack"]})
@summary(cli.matrix)
def matrix(c: Context, config: str = "", set_: list[str] | None = None, release: list[str] | None = None,
           cloudstack: str = "") -> None:
    cli.matrix(config, set_ or [], release or [], cloudstack)


@task(help={"old": HELP["old"], "new": HELP["new"], "json": HELP["json"]})
@summary(cli.diff)
def diff(c: Context, old: str, new: str, json: bool = False) -> None:
    if different := cli.diff(old, new, json):
        raise SystemExit(different)


@task(iterable=["folder"], help={"out": HELP["out"], "folder": f"{HELP['folder']} (repeatable)"})
@summary(cli.release)
def release(c: Context, out: str, folder: list[str] | None = None) -> None:
    cli.release(out, folder or [])


@task(iterable=["set_"], help=CONFIG_HELP)
@summary(cli.validate)
def validate(c: Context, config: str = "", set_: list[str] | None = None) -> None:
    cli.validate(config, set_ or [])


@task(help={"all_": HELP["all"]})
@summary(cli.clean)
def clean(c: Context, all_: bool = False) -> None:
    cli.clean(all_)


@task
def version(c: Context) -> None:
    """Print sysvm's version (as `sysvm --version`; `invoke --version` is Invoke's own)."""
    print(f"sysvm {cli.version()}")


def in_marked_output(command: Callable[[], int]) -> int:
    """Run a test command that writes its results (JUnit XML, fault tables) into the checkout's output/,
    marked as sysvm's first so that clean removes them."""

    def marked() -> int:
        Workspace(CHECKOUT / "output").mark()
        return command()

    return cli.guarded(marked)


@task(help={"quick": "leave out the image tier, the tests that build and boot an image (minutes under TCG)"})
def test(c: Context, quick: bool = False) -> None:
    """Run ruff, then the test tiers unit, host, mirror and image in turn until one fails; a table at the end."""
    from sysvm.selftest import run_tests

    raise SystemExit(in_marked_output(lambda: run_tests(CHECKOUT, quick)))


@task
def faults(c: Context) -> None:
    """Both fault tables in full: each build stage and seeding stopped by SIGTERM and SIGKILL (some 18 min under TCG)."""
    from sysvm.selftest import run_fault_tables

    raise SystemExit(in_marked_output(lambda: run_fault_tables(CHECKOUT)))
