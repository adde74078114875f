"""The hand-over to CloudStack's scripts (sysvm-handover), run on the host against a temporary root with the
cloud-scripts.tgz packed from CloudStack's own tree. tar really unpacks it; bootstrap.sh and postinit.sh,
which would reconfigure the machine they run on, are recorded instead of run."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path

import pytest
from cloud_setup.handover import Handover, run_script
from cloud_setup.paths import Paths

from sysvm.cloudstack import locate, pack_agent, pack_scripts
from tests.tiers import unavailable

CLOUDSTACK = Path(__file__).resolve().parents[2] / "shared" / "cloudstack"


@pytest.fixture(scope="module")
def host_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not CLOUDSTACK.is_dir():
        unavailable(f"no CloudStack tree at {CLOUDSTACK} (set verify.cloudstack_scripts to run these)")
    folder = tmp_path_factory.mktemp("host")
    tree = locate(str(CLOUDSTACK))
    pack_scripts(tree, folder / "cloud-scripts.tgz")
    pack_agent(tree, folder / "agent.zip")
    return {"scripts": folder / "cloud-scripts.tgz", "agent": folder / "agent.zip"}


class Recorder:
    """Runs tar for real (into the temporary root); records CloudStack's boot scripts instead of running them."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], timeout: float) -> int | None:
        self.calls.append(argv)
        if argv[0] == "tar":
            return run_script(argv, timeout)
        if argv[-1].endswith("postinit.sh"):
            (self.paths / "var/cache/cloud/boot_up_done").write_text("done by postinit\n")
        return 0

    def scripts_run(self) -> list[str]:
        return [Path(argv[-1]).name for argv in self.calls if argv[0] != "tar"]


def handover(root: Path, wait: float = 3.0) -> tuple[Handover, Recorder]:
    paths = Paths(root)
    (root / "var/cache/cloud").mkdir(parents=True, exist_ok=True)
    recorder = Recorder(paths)
    return Handover(paths, "router", run=recorder, wait_seconds=wait, settle_seconds=0.5, poll_seconds=0.05), recorder


def complete(handover: Handover) -> bool:
    from_host = handover.wait_for_host_scripts() and handover.unpack_host_scripts()
    handover.finish(from_host)
    return from_host


def test_scripts_copied_while_waiting_are_unpacked_bootstrapped_and_kept(tmp_path, host_files, caplog):
    caplog.set_level(logging.INFO, logger="cloud_setup")
    step, recorder = handover(tmp_path)
    cache = tmp_path / "var/cache/cloud"
    data = host_files["scripts"].read_bytes()

    def host_copies() -> None:  # like scp: the file grows in place, agent.zip first
        time.sleep(0.2)
        (cache / "agent.zip").write_bytes(host_files["agent"].read_bytes())
        with (cache / "cloud-scripts.tgz").open("wb") as handle:
            for start in range(0, len(data), len(data) // 4 + 1):
                handle.write(data[start:start + len(data) // 4 + 1])
                handle.flush()
                time.sleep(0.1)

    copier = threading.Thread(target=host_copies)
    copier.start()
    assert complete(step)
    copier.join()
    checksum = hashlib.sha512(data).hexdigest()
    assert (tmp_path / "opt/cloud/bin/setup/bootstrap.sh").is_file()
    assert (tmp_path / "opt/cloud/bin/keystore-setup").stat().st_mode & 0o777 == 0o755
    assert (cache / "cloud-scripts-signature").read_text() == checksum + "\n"
    assert (cache / "patch.required").is_file()  # bootstrap.sh installs agent.zip only when this is there
    assert recorder.scripts_run() == ["bootstrap.sh", "postinit.sh"]
    assert (tmp_path / "usr/share/cloud/cloud-scripts.tgz").read_bytes() == data
    assert not (cache / "cloud-scripts.tgz").exists() and not (cache / "agent.zip").exists()
    assert (cache / "boot_up_done").read_text() == "done by postinit\n"
    assert "rejected" not in caplog.text


def test_the_same_scripts_again_are_not_unpacked_but_bootstrap_still_runs(tmp_path, host_files, caplog):
    caplog.set_level(logging.INFO, logger="cloud_setup")
    step, recorder = handover(tmp_path)
    cache = tmp_path / "var/cache/cloud"
    (cache / "cloud-scripts.tgz").write_bytes(host_files["scripts"].read_bytes())
    assert complete(step)
    (tmp_path / "opt/cloud/bin/setup/bootstrap.sh").write_text("# changed by hand\n")
    (cache / "cloud-scripts.tgz").write_bytes(host_files["scripts"].read_bytes())
    again, recorder = handover(tmp_path)
    assert complete(again)
    assert [argv[0] for argv in recorder.calls] == ["/bin/bash", "/bin/bash"]  # no tar this time
    assert (tmp_path / "opt/cloud/bin/setup/bootstrap.sh").read_text() == "# changed by hand\n"
    assert "matches the scripts in place" in caplog.text


def test_a_corrupt_archive_is_set_aside_and_the_image_keeps_its_own_setup(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cloud_setup")
    step, recorder = handover(tmp_path, wait=30.0)
    cache = tmp_path / "var/cache/cloud"
    (cache / "cloud-scripts.tgz").write_bytes(b"\x1f\x8b\x08\x00" + b"not really gzip" * 100)
    started = time.monotonic()
    assert not complete(step)
    assert time.monotonic() - started < 5  # decided once the file stopped changing, not after the full wait
    assert recorder.calls == []
    assert (cache / "cloud-scripts.tgz.rejected").is_file() and not (cache / "cloud-scripts.tgz").exists()
    assert (cache / "boot_up_done").is_file()
    assert "is not a readable gzip tar" in caplog.text and "own router setup stands" in caplog.text


def test_a_host_that_sends_nothing_leaves_the_own_setup_after_the_bounded_wait(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cloud_setup")
    step, recorder = handover(tmp_path, wait=0.5)
    assert not complete(step)
    assert recorder.calls == []
    assert (tmp_path / "var/cache/cloud/boot_up_done").is_file()
    assert "the host copied no cloud-scripts.tgz within" in caplog.text


def test_scripts_baked_into_the_image_run_when_the_host_sends_nothing(tmp_path, host_files, caplog):
    caplog.set_level(logging.INFO, logger="cloud_setup")
    baked, _ = handover(tmp_path)
    (tmp_path / "var/cache/cloud/cloud-scripts.tgz").write_bytes(host_files["scripts"].read_bytes())
    assert complete(baked)  # stands in for the build baking them in
    step, recorder = handover(tmp_path, wait=0.3)
    assert not complete(step)
    assert recorder.scripts_run() == ["bootstrap.sh", "postinit.sh"]
    assert "handing over to the image's CloudStack scripts" in caplog.text


def test_a_user_vm_without_cloudstack_s_scripts_starts_cloud_init_once(tmp_path):
    """The host copies nothing into a User VM: its own setup starts cloud-init for the ConfigDrive's user data,
    and not again once that user data has marked the VM as provisioned."""
    step, recorder = handover(tmp_path)
    step.finish(False, user_vm=True)
    assert recorder.calls == [["systemctl", "start", "--no-block", "cloud-init.service", "cloud-config.service",
                               "cloud-final.service"]]
    assert (tmp_path / "var/cache/cloud/boot_up_done").is_file()
    (tmp_path / "home/cloud").mkdir(parents=True)
    (tmp_path / "home/cloud/success").write_text("true\n")
    again, recorder = handover(tmp_path)
    again.finish(False, user_vm=True)
    assert recorder.calls == []
