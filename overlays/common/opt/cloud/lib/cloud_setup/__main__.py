"""cloud-early-config: learn the role from the hypervisor and configure this system VM for it."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cloud_setup.cmdline import Acquisition, detect_hypervisor, parse, run_command, save_json
from cloud_setup.paths import Paths
from cloud_setup.setup import Setup


def configure_logging(paths: Paths) -> logging.Logger:
    """Every action goes to /var/log/cloud.log and to the console (the journal, at boot)."""
    paths.log.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("cloud_setup")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s cloud-early-config %(levelname)s %(message)s")
    for handler in (logging.FileHandler(paths.log), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cloud-early-config", description=__doc__)
    parser.add_argument("--root", type=Path, default=Path("/"), help="root of the system to configure")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the command line")
    args = parser.parse_args(argv)
    paths = Paths(args.root)
    log = configure_logging(paths)
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


if __name__ == "__main__":
    sys.exit(main())
