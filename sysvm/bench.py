"""invoke bench: the speed and size targets, measured (results in output/bench.json, one entry per Debian
release and architecture, so that an arm64 run sits beside the amd64 one).

Runs a cold build (empty build folders and download cache), a rebuild with nothing changed, a rebuild
after an overlay-only change, and verification of three roles on the KVM artifact: on the image's own
setup, and (with verify.cloudstack_scripts) started one at a time and then two at a time with CloudStack's
scripts (the router role brings its redundant pair: router_suites_s has the configuration and suite times
of both). It adds the tier times of the last `invoke test` (output/test-tiers.json). While the
builds run, a sampler sums the resident memory of this process and its descendants, QEMU left out
(the guest's memory is not the builder's), and keeps the peak.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

from sysvm import log
from sysvm.build import build
from sysvm.config import Config
from sysvm.fsutil import atomic_write, remove_tree
from sysvm.qemu import accelerator
from sysvm.verify import verify
from sysvm.workspace import Workspace

BENCH_ROLES = ("consoleproxy", "secstorage", "router")
TARGETS = {"cold_build_s": 240, "overlay_only_rebuild_s": 20, "no_change_rebuild_s": 5,
           "verify_three_roles_s": 240, "peak_rss_mib": 2048}
# With CloudStack's scripts: the three roles started as a 4.17+ host starts them and verified, two at a time.
CLOUDSTACK_TARGETS = {"cloudstack_verify_three_roles_s": 240}
# `invoke test` (CI) as a whole, from the tier times it records in output/test-tiers.json.
CI_TARGETS = {"ci_tests_s": 2400}
TIERS_FILE = "test-tiers.json"
# QEMU start to get_template_version.sh answering, per role, started with CloudStack's scripts: one VM at
# a time, as the target reads (a VM started on a machine of 2 cores), so that a second VM's boot does not
# share the cores and the figure is the start's own.
START_TARGETS = {"cloudstack_start_per_role_s": 180}


def _children() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    return parents


def tree_rss_kib(root: int) -> int:
    """Resident memory of a process tree in KiB, without QEMU guests."""
    parents = _children()
    members, frontier = {root}, [root]
    while frontier:
        current = frontier.pop()
        for pid, parent in parents.items():
            if parent == current and pid not in members:
                members.add(pid)
                frontier.append(pid)
    total = 0
    for pid in members:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        name = status.split("\n", 1)[0].split(":", 1)[1].strip()
        if name.startswith("qemu-system"):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


class PeakMemory:
    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.peak_kib = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kib = max(self.peak_kib, tree_rss_kib(os.getpid()))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _timed(action: object) -> float:
    started = time.monotonic()
    action()  # type: ignore[operator]
    return round(time.monotonic() - started, 1)


def _last_test_tiers(workspace: Workspace) -> dict[str, dict[str, float]]:
    """The tier times the last `invoke test` of this checkout wrote (none if it has not run)."""
    try:
        tiers = json.loads((workspace.root / TIERS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {tier: entry for tier, entry in tiers.items() if isinstance(entry, dict) and "seconds" in entry}


def bench(config: Config, workspace: Workspace) -> dict[str, object]:
    results: dict[str, object] = {}
    log.say("bench: cold build (empty build folders and download cache)")
    for folder in (workspace.build, workspace.cache, workspace.artifacts):
        remove_tree(folder)
    with PeakMemory() as memory:
        results["cold_build_s"] = _timed(lambda: build(config, workspace))
        cold = json.loads((workspace.artifacts / "build-report.json").read_text())
        log.say("bench: rebuild with nothing changed")
        results["no_change_rebuild_s"] = _timed(lambda: build(config, workspace))
        layer = workspace.root / "bench-overlay"
        remove_tree(layer)
        (layer / "etc").mkdir(parents=True)
        (layer / "etc/sysvm-bench").write_text(f"{uuid.uuid4()}\n")
        changed = replace(config, overlay_layers=[*config.overlay_layers, str(layer)])
        log.say("bench: rebuild after an overlay-only change")
        results["overlay_only_rebuild_s"] = _timed(lambda: build(changed, workspace))
    results["release"] = config.debian.release
    results["architecture"] = config.debian.architecture
    results["accelerator"] = accelerator(config.verify.accelerator, workspace.cache, config.debian.architecture)
    results["peak_rss_mib"] = round(memory.peak_kib / 1024, 1)
    own_setup = replace(changed, verify=replace(changed.verify, cloudstack_scripts=""))
    log.say(f"bench: verify {', '.join(BENCH_ROLES)} on the KVM artifact")
    results["verify_three_roles_s"] = _timed(lambda: verify(own_setup, workspace, roles=list(BENCH_ROLES),
                                                            hypervisor="kvm"))
    if config.verify.cloudstack_scripts:
        log.say(f"bench: start {', '.join(BENCH_ROLES)} as a CloudStack host does, with its scripts")
        outcomes = verify(changed, workspace, roles=list(BENCH_ROLES), hypervisor="kvm", parallel=1)
        # (the redundant router pair, which verify boots beside the router role, has no single start time)
        results["cloudstack_start_s"] = {o.role: o.timings["cloudstack_ready_s"] for o in outcomes
                                         if "cloudstack_ready_s" in o.timings}
        limit = START_TARGETS["cloudstack_start_per_role_s"]
        results["met_cloudstack_start"] = all(t is not None and t <= limit for t in results["cloudstack_start_s"].values())
        log.say(f"bench: verify {', '.join(BENCH_ROLES)} started with CloudStack's scripts, two at a time")
        started = time.monotonic()
        outcomes = verify(changed, workspace, roles=list(BENCH_ROLES), hypervisor="kvm")
        results["cloudstack_verify_three_roles_s"] = round(time.monotonic() - started, 1)
        # the router's and the redundant pair's: the management server's configuration, then their suites
        results["router_suites_s"] = {
            o.name: {"configuration_s": o.timings.get("router_config_s", o.timings.get("configured_s")),
                     "suites_s": o.timings.get("tests_s")} for o in outcomes if o.role == "router"}
    tiers = _last_test_tiers(workspace)
    if tiers:
        results["ci_tiers_s"] = {tier: entry["seconds"] for tier, entry in tiers.items()}
        results["ci_tests_s"] = round(sum(results["ci_tiers_s"].values()), 1)
    results["artifact_sizes"] = {name: info["size"] for name, info in cold["artifacts"].items()}
    results["cold_build_stages_s"] = cold["durations_s"]
    targets = {**TARGETS, **CLOUDSTACK_TARGETS, **CI_TARGETS}
    results["targets"] = {**targets, **START_TARGETS}
    results["met"] = {key: results[key] <= limit for key, limit in targets.items()  # type: ignore[operator]
                      if key in results}
    record = workspace.root / "bench.json"
    try:
        earlier = json.loads(record.read_text())
    except (OSError, ValueError):
        earlier = {}
    runs = {name: entry for name, entry in earlier.items() if isinstance(entry, dict) and "release" in entry}
    runs[f"{config.debian.release}-{config.debian.architecture}"] = results
    atomic_write(record, json.dumps(runs, indent=2, sort_keys=True) + "\n")
    log.say(json.dumps(results, indent=2))
    return results
