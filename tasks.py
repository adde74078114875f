"""Invoke tasks: each parses its arguments and calls one function of the sysvm package."""

from __future__ import annotations

from invoke import Context, task

from sysvm.cli import guarded, load_config
from sysvm.workspace import Workspace

CONFIG_HELP = {
    "config": "YAML file merged over sysvm.yaml",
    "set_": "override one setting, key=value (repeatable), e.g. --set debian.release=bullseye",
}
STAGE_HELP = {**CONFIG_HELP, "force": "rebuild even when the stage is up to date"}


@task(iterable=["set_"], help=STAGE_HELP)
def render(c: Context, config: str = "", set_: list[str] | None = None, force: bool = False) -> None:
    """Render templates and overlay layers into output/build/render-<key>/overlay."""
    from sysvm.build import render_only

    guarded(lambda: print(render_only(load_config(config, set_ or []), Workspace(), force)))


@task(iterable=["set_"], help=STAGE_HELP)
def build(c: Context, config: str = "", set_: list[str] | None = None, force: bool = False) -> None:
    """Build the template: rootfs, disk, Packer provisioning and one artifact per hypervisor."""
    from sysvm.build import build as run_build

    guarded(lambda: run_build(load_config(config, set_ or []), Workspace(), force))


@task(iterable=["set_", "role"], help={
    **CONFIG_HELP,
    "artifact": "artifact to boot (default: the KVM artifact of this configuration)",
    "role": "role to verify (repeatable; default: verify.roles)",
    "hypervisor": "kvm, xen, vmware or hyperv: boot that artifact (only KVM gets role tests)",
    "cloudstack": "a CloudStack source tree: start each role as a 4.17+ host does, with its scripts",
})
def verify(c: Context, config: str = "", set_: list[str] | None = None, artifact: str = "",
           role: list[str] | None = None, hypervisor: str = "", cloudstack: str = "") -> None:
    """Boot artifacts in QEMU and test each role with testinfra; writes JUnit XML under output/verify."""
    from sysvm.verify import verify as run_verify

    guarded(lambda: run_verify(load_config(config, set_ or []), Workspace(), artifact, role or [], hypervisor,
                               cloudstack))


@task(help={"args": "cloud-install-sys-tmplt options, quoted, e.g. \"-m /mnt/secondary -f FILE -h kvm\""})
def seed(c: Context, args: str = "") -> None:
    """Install an artifact into secondary storage as cloud-install-sys-tmplt does (see sysvm-seed --help)."""
    import shlex

    from sysvm.seed import main

    raise SystemExit(main(shlex.split(args)))


@task(iterable=["set_"], help=CONFIG_HELP)
def bench(c: Context, config: str = "", set_: list[str] | None = None) -> None:
    """Cold build, no-change rebuild, overlay-only rebuild and verify; results in output/bench.json."""
    from sysvm.bench import bench as run_bench

    guarded(lambda: run_bench(load_config(config, set_ or []), Workspace()))


@task(iterable=["set_", "release"], help={
    **CONFIG_HELP,
    "release": "a Debian release to build and verify (repeatable), e.g. --release bookworm --release trixie",
    "cloudstack": "a CloudStack source tree: also start each role as a 4.17+ host does, with its scripts",
})
def matrix(c: Context, config: str = "", set_: list[str] | None = None, release: list[str] | None = None,
           cloudstack: str = "") -> None:
    """Build and verify the template for each release, each in its own output folders; output/matrix.json."""
    from sysvm.matrix import matrix as run_matrix

    guarded(lambda: run_matrix(config, set_ or [], release or [], cloudstack))


@task(help={"all_": "also remove the download cache (output/cache)"})
def clean(c: Context, all_: bool = False) -> None:
    """Remove generated files under output/ (the apt cache stays unless --all)."""
    from sysvm.workspace import clean as run_clean

    guarded(lambda: run_clean(Workspace(), all_))


@task(help={"quick": "leave out the tests that build and boot an image (minutes under TCG)"})
def test(c: Context, quick: bool = False) -> None:
    """Run ruff and the whole test suite, end-to-end image tests included."""
    from sysvm.selftest import run_tests

    raise SystemExit(guarded(lambda: run_tests(quick)))


@task
def faults(c: Context) -> None:
    """Both fault tables in full: each build stage and seeding stopped by SIGTERM and SIGKILL (some 18 min under TCG)."""
    from sysvm.selftest import run_fault_tables

    raise SystemExit(guarded(run_fault_tables))
