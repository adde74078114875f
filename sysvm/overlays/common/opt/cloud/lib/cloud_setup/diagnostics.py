"""Gather files and command outputs into one zip for the management server's diagnostics request.

Arguments are file paths and markers such as [IPTABLES]: a marker runs its command and stores the
output as iptables.log. Missing files, unknown markers and failing commands are listed in
errors.log inside the zip; none of them stops the collection.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import zipfile
from pathlib import Path

MARKER_COMMANDS: dict[str, list[str]] = {
    "IPTABLES": ["iptables-save"],
    "IP6TABLES": ["ip6tables-save"],
    "IPROUTE": ["ip", "route", "show", "table", "all"],
    "IPADDR": ["ip", "address", "show"],
    "IFCONFIG": ["ip", "address", "show"],
    "ARP": ["ip", "neighbour", "show"],
    "NETSTAT": ["ss", "-tunap"],
    "DF": ["df", "-h"],
    "PS": ["ps", "aux"],
    "UPTIME": ["uptime"],
    "JOURNAL": ["journalctl", "-b", "--no-pager"],
}


def collect(items: list[str], destination: Path, timeout: float = 60.0) -> Path:
    errors: list[str] = []
    temporary = destination.with_name(f".{destination.name}.tmp")
    with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for item in items:
            if item.startswith("[") and item.endswith("]"):
                name = item[1:-1].upper()
                command = MARKER_COMMANDS.get(name)
                if command is None:
                    errors.append(f"{item}: unknown marker (known: {', '.join(sorted(MARKER_COMMANDS))})")
                    continue
                try:
                    result = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
                    archive.writestr(f"{name.lower()}.log", result.stdout + result.stderr)
                    if result.returncode != 0:
                        errors.append(f"{item}: {' '.join(command)} exited {result.returncode}")
                except (OSError, subprocess.TimeoutExpired) as error:
                    errors.append(f"{item}: {' '.join(command)} could not run: {error}")
                continue
            path = Path(item)
            if path.is_file():
                archive.write(path, arcname=str(path).lstrip("/"))
            else:
                errors.append(f"{item}: no such file")
        if errors:
            archive.writestr("errors.log", "\n".join(errors) + "\n")
    temporary.replace(destination)
    return destination


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="get_diagnostics_files", description=__doc__)
    parser.add_argument("items", nargs="+", help="file paths and [MARKER] commands")
    parser.add_argument("--output-dir", type=Path, default=Path("/root"))
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    print(collect(args.items, args.output_dir / f"diagnostics_files_{stamp}.zip"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
