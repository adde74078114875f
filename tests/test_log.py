"""Logging: stage and elapsed time in every record, one file per stage and per parallel job, colour only on a
terminal, and a ticker that says where each parallel job is."""

from __future__ import annotations

import logging
import os
import re
import select
import sys
import threading
import time
from pathlib import Path

import pytest

from sysvm import log
from sysvm.process import run


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records():
    handler = Records()
    log.LOGGER.addHandler(handler)
    yield handler.records
    log.LOGGER.removeHandler(handler)


def test_records_carry_the_stage_and_the_time_since_it_started(tmp_path, records, capsys):
    log.say("before any stage")
    with log.stage("packer", tmp_path / "logs") as path:
        time.sleep(0.3)
        log.say("waiting for Packer")
    stamped = {record.getMessage(): record for record in records}
    assert stamped["before any stage"].stage == log.OUTSIDE_STAGES
    assert stamped["waiting for Packer"].stage == "packer"
    assert 0.3 <= stamped["waiting for Packer"].elapsed < 5
    terminal = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"\[packer +0\.[3-9]s\] waiting for Packer", terminal[2]), terminal
    assert terminal[1] == f"[packer    0.0s] started (log: {path})"
    assert re.fullmatch(r"\[packer +0\.[3-9]s\] done in 0\.[3-9]s", terminal[3]), terminal
    assert re.fullmatch(r"\d\d:\d\d:\d\d +0\.[3-9]s waiting for Packer", path.read_text().splitlines()[1])


def test_a_failed_stage_says_why_in_red_only_where_colour_belongs(tmp_path, capsys):
    with pytest.raises(RuntimeError), log.stage("disk", tmp_path):
        raise RuntimeError("no space left")
    last = capsys.readouterr().err.splitlines()[-1]
    assert re.fullmatch(r"\[disk +0\.0s\] failed after 0\.0s: no space left", last)
    assert "\033" not in (tmp_path / "disk.log").read_text()


def job_work(name: str, together: threading.Barrier) -> str:
    together.wait(10)  # both jobs write at the same time
    for index in range(50):
        log.say(f"{name} message {index}")
        run(["sh", "-c", f"for i in 1 2 3 4; do echo {name}-output-{index}-$i; done"])
    return name


def test_two_jobs_in_two_threads_write_two_files_without_interleaving(tmp_path):
    together = threading.Barrier(2)
    with log.stage("export", tmp_path) as stage_log, log.parallel(2) as pool:
        futures = [pool.submit(name, job_work, name, together) for name in ("kvm", "vmware")]
        assert [future.result() for future in futures] == ["kvm", "vmware"]
    for name, other in (("kvm", "vmware"), ("vmware", "kvm")):
        text = (tmp_path / f"export-{name}.log").read_text()
        assert other not in text
        output = [line.split()[-1] for line in text.splitlines() if "-output-" in line and "$" not in line]
        assert output == [f"{name}-output-{index}-{i}" for index in range(50) for i in (1, 2, 3, 4)]
        assert text.count("# exit 0 after") == 50
    stage_text = stage_log.read_text()
    assert f"kvm: started (log: {tmp_path / 'export-kvm.log'})" in stage_text
    assert f"vmware: started (log: {tmp_path / 'export-vmware.log'})" in stage_text
    assert "vmware: vmware message 49" in stage_text  # messages reach the stage's log too
    assert "-output-" not in stage_text  # a job's commands stay in its own


def say_everything(tmp_path: Path) -> None:
    log.say("plain")
    log.warning("careful")
    with pytest.raises(RuntimeError), log.stage("rootfs", tmp_path):
        raise RuntimeError("broken")


def read_all(fd: int) -> bytes:
    data = b""
    while select.select([fd], [], [], 0.5)[0]:
        data += os.read(fd, 65536)
    return data


@pytest.mark.parametrize("no_color", ["", "1"])
def test_colour_only_on_a_terminal_and_without_no_color(tmp_path, monkeypatch, no_color):
    monkeypatch.setenv("NO_COLOR", no_color)
    controller, terminal = os.openpty()
    with os.fdopen(terminal, "w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        say_everything(tmp_path)
        on_terminal = read_all(controller).decode()
    os.close(controller)
    plain = tmp_path / "stderr.txt"
    with plain.open("w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        say_everything(tmp_path)
    in_file = plain.read_text()
    assert "warning: careful" in in_file and "failed after" in in_file and "\033" not in in_file
    if no_color:
        assert "\033" not in on_terminal
    else:
        assert "\033[33mwarning: careful\033[0m" in on_terminal
        assert re.search(r"\033\[1;31mfailed after [0-9.]+s: broken\033\[0m", on_terminal)
        assert re.search(r"\033\[34m\[sysvm +[0-9.]+s\] \033\[0mplain", on_terminal)
    assert "\033" not in (tmp_path / "rootfs.log").read_text()


def verify_like_job(steps: list[str], release: threading.Event) -> None:
    for step in steps:
        log.step(step)
        time.sleep(0.4)
    release.wait(10)


def test_the_ticker_says_each_running_jobs_step_and_how_long_it_has_been_in_it(tmp_path, capsys):
    release = threading.Event()
    with log.stage("verify", tmp_path) as stage_log, log.parallel(2, every=0.2) as pool:
        router = ["starting QEMU", "waiting for the guest agent", "guest agent answered, waiting for SSH"]
        futures = [pool.submit("router", verify_like_job, router, release),
                   pool.submit("xen", verify_like_job, ["starting QEMU", "waiting for a login prompt"], release),
                   pool.submit("secstorage", verify_like_job, ["starting QEMU"], release)]
        time.sleep(2.8)
        release.set()
        for future in futures:
            future.result()
    terminal = capsys.readouterr().err
    assert re.search(r"^\[verify +[0-9.]+s\] router: guest agent answered, waiting for SSH \(1 s\)$", terminal, re.M)
    assert re.search(r"^\[verify +[0-9.]+s\] xen: waiting for a login prompt \(1 s\)$", terminal, re.M)
    assert re.search(r"^\[verify +[0-9.]+s\] 1 more waiting their turn$", terminal, re.M)
    assert re.search(r"^\[verify +[0-9.]+s\] secstorage: starting QEMU \(\d s\)$", terminal, re.M)
    assert "waiting their turn" not in stage_log.read_text()  # the ticker is for the terminal only
    assert "step: guest agent answered, waiting for SSH" in (tmp_path / "verify-router.log").read_text()


def test_a_single_wait_says_how_long_it_has_lasted(capsys):
    with log.waiting("mmdebstrap to install the packages", every=0.2):
        time.sleep(1.3)
    lines = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"\[sysvm +[0-9.]+s\] waiting for mmdebstrap to install the packages \(1 s\)", lines[-1])
