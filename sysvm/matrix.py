"""invoke matrix: build and verify one template per Debian release, each in a workspace of its own.

A release engineer's release matrix in one command. Every release gets its own artifacts, verify
results and logs (output/artifacts-<release>/ ...); stage folders and the download cache are shared, so
a release built before costs only what changed. One failing release does not stop the others; the
command fails at the end if any did. Results: output/matrix.json and a table on the terminal.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from sysvm import log
from sysvm.build import build
from sysvm.cli import load_config
from sysvm.errors import SysvmError
from sysvm.fsutil import atomic_write
from sysvm.verify import verify
from sysvm.workspace import Workspace


def matrix(config_file: str, overrides: Sequence[str], releases: Sequence[str], cloudstack: str = "") -> list[dict]:
    if not releases:
        raise SysvmError("--release: name at least one Debian release (repeatable), e.g. --release trixie")
    # Every release's settings are checked before any work starts.
    configs = {release: load_config(config_file, [*overrides, f"debian.release={release}"]) for release in releases}
    Workspace().mark()  # only once every release's settings are good: bad ones write nothing
    rows = []
    for release, config in configs.items():
        workspace = Workspace.of(config, variant=release)
        row: dict[str, object] = {"release": release, "artifacts": str(workspace.artifacts)}
        log.say(f"matrix: {release}")
        try:
            started = time.monotonic()
            build(config, workspace)
            row["build_s"] = round(time.monotonic() - started, 1)
            report = json.loads((workspace.artifacts / "build-report.json").read_text())
            row["sizes_mib"] = {name: round(info["size"] / 2**20, 1) for name, info in report["artifacts"].items()}
            started = time.monotonic()
            outcomes = verify(config, workspace, cloudstack=cloudstack)
            row["verify_s"] = round(time.monotonic() - started, 1)
            row["verified"] = sorted(outcome.name for outcome in outcomes)
            row["result"] = "PASS"
        except SysvmError as error:
            row["result"] = f"FAIL: {error}"
        rows.append(row)
    workspace = Workspace()
    atomic_write(workspace.root / "matrix.json", json.dumps(rows, indent=2) + "\n")
    for row in rows:
        log.say(f"    {row['release']:<9} {str(row.get('build_s', '-')):>7}s build  "
                f"{str(row.get('verify_s', '-')):>7}s verify  {row['result'][:150]}")
    failed = [str(row["release"]) for row in rows if row["result"] != "PASS"]
    if failed:
        raise SysvmError(f"matrix: {', '.join(failed)} failed (see {workspace.root / 'matrix.json'})")
    return rows
