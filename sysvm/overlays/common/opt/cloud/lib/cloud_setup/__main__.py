"""The two boot steps of a system VM: sysvm-setup (learn the role from the hypervisor and configure this VM
for it, before the network and sshd) and sysvm-handover (after sshd: hand over to CloudStack's scripts)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cloud_setup.cmdline import Acquisition, detect_hypervisor, parse, run_command, save_json
from cloud_setup.handover import HOST_WAIT_SECONDS, Handover
from cloud_setup.paths import Paths
from cloud_setup.roles import USER_VM_ROLES
from cloud_setup.setup import Setup


def configure_logging(paths: Paths, program: str) -> logging.Logger:
    """Every action goes to /var/log/cloud.log and to the console (the journal, at boot)."""
    paths.log.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("cloud_setup")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s " + program + " %(levelname)s %(message)s")
    for handler in (logging.FileHandler(paths.log), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sysvm-setup", description="configure this system VM for its role")
    parser.add_argument("--root", type=Path, default=Path("/"), help="root of the system to configure")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the command line")
    args = parser.parse_args(argv)
    paths = Paths(args.root)
    log = configure_logging(paths, parser.prog)
    if paths.boot_up_done.exists():  # set again at the end of this boot; get_template_version.sh waits for it
        paths.boot_up_done.unlink()
    hypervisor = detect_hypervisor(paths)
    log.info("hypervisor: %s", hypervisor)
    text = Acquisition(paths, hypervisor, wait_seconds=args.wait).acquire()
    line = parse(text or "")
    if text:
        save_json(paths, line)
    Setup(paths, line, hypervisor, run_command).apply()
    if not text or line.errors:
        log.error("finished with problems: %s", "; ".join(line.errors) or "no command line")
        return 1
    log.info("finished: role %s is configured", line.role)
    return 0


def handover_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sysvm-handover", description="hand over to CloudStack's scripts")
    parser.add_argument("--root", type=Path, default=Path("/"), help="root of the system to configure")
    parser.add_argument("--wait", type=float, default=HOST_WAIT_SECONDS,
                        help="seconds to wait for the host's cloud-scripts.tgz")
    args = parser.parse_args(argv)
    paths = Paths(args.root)
    log = configure_logging(paths, parser.prog)
    line = parse(paths.cmdline.read_text() if paths.cmdline.is_file() else "")
    handover = Handover(paths, line.role, wait_seconds=args.wait)
    user_vm = line.role in USER_VM_ROLES
    if user_vm:
        log.info("%s is a User VM to the host, which copies no cloud-scripts.tgz into it", line.role)
    from_host = not user_vm and handover.wait_for_host_scripts() and handover.unpack_host_scripts()
    if from_host:
        # The role's rules file may have come with the scripts: copy it into place as CloudStack's init does.
        Setup(paths, line, detect_hypervisor(paths), run_command).firewall()
    handover.finish(from_host, user_vm)
    return 0  # a host that sends nothing, or a bad archive, leaves the VM on its own setup: not a failure


if __name__ == "__main__":
    sys.exit(main())
