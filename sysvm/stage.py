"""What every cached stage shares: a key made from named inputs, a folder named after it, the decision to
reuse that folder, and the inputs kept in it, so that a rebuild can say which input changed.

A stage names each input the way a user knows it (`packages.common`, `disk.size_mib`, `rootfs` for the
upstream stage's key, `templates/common/` for a tree's hash). The key is a hash of exactly what is
written to the folder's inputs.json, so a key can always be explained from its folder.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sysvm import log
from sysvm.cache import stage_key
from sysvm.fsutil import atomic_path
from sysvm.workspace import Workspace

INPUTS = "inputs.json"
SHOWN_CHANGES = 3  # a reason stays one line
SHOWN_ITEMS = 4
SHOWN_VALUE_LENGTH = 40  # longer values (tree hashes, apt source lines) are only said to have changed


@dataclass(frozen=True)
class Stage:
    name: str
    key: str
    folder: Path
    inputs: dict[str, object]  # as inputs.json holds them: tuples become lists, paths strings

    @classmethod
    def of(cls, workspace: Workspace, name: str, inputs: Mapping[str, object]) -> Stage:
        key = key_of(name, inputs)
        return cls(name, key, workspace.stage_dir(name, key), as_recorded(inputs))

    def reuse(self, *outputs: Path, force: bool = False) -> bool:
        """True when every output exists from an earlier build with the same key and --force was not given.
        Either way the decision is said: `up to date (<folder>)`, or why the stage builds."""
        if not force and all(path.is_file() for path in outputs):
            self.mark_used()
            log.say(f"{self.name}: up to date ({self.folder})")
            return True
        missing = [path.name for path in outputs if not path.is_file()]
        # Against its own folder when there is one (an output went missing), else the most recently used.
        found = earlier(self.folder.parent, self.name)
        own = [stage for stage in found if stage.folder == self.folder]
        before = (own or found)[0].inputs if found else None
        log.say(f"{self.name}: {reason(before, self.inputs, force, missing)}")
        return False

    @contextmanager
    def building(self) -> Iterator[Path]:
        """The stage's folder under a temporary name: it gets the inputs last and is renamed into place only
        when the block succeeds, so a folder that exists is complete and says what it was made from."""
        with atomic_path(self.folder) as temporary:
            temporary.mkdir(parents=True)
            yield temporary
            document = {"stage": self.name, "key": self.key, "inputs": self.inputs}
            (temporary / INPUTS).write_text(json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
        self.mark_used()

    def mark_used(self) -> None:
        # The most recently used folder is what the next rebuild explains itself against, and what prune keeps.
        # The clock is read here: the kernel's file time advances in ticks, and two stages may share one.
        now = time.time_ns()
        os.utime(self.folder, ns=(now, now))


def key_of(name: str, inputs: Mapping[str, object]) -> str:
    """The key of a stage: a hash of its inputs exactly as they are recorded."""
    return stage_key(name, as_recorded(inputs))


def as_recorded(inputs: Mapping[str, object]) -> dict[str, object]:
    """Inputs as inputs.json gives them back, to be compared with recorded ones."""
    return json.loads(json.dumps(inputs, default=str))


def earlier(build: Path, name: str) -> list[Stage]:
    """The complete folders of a stage under a workspace's build folder, most recently used first."""
    found = []
    for path in build.glob(f"{name}-*/{INPUTS}"):
        try:
            document = json.loads(path.read_text())
            found.append((path.parent.stat().st_mtime_ns,
                          Stage(name, document["key"], path.parent, dict(document["inputs"]))))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return [stage for _, stage in sorted(found, key=lambda item: item[0], reverse=True)]


def reason(before: Mapping[str, object] | None, after: Mapping[str, object], force: bool,
           missing: list[str]) -> str:
    """Why a stage builds, in one line: `building (no earlier build)`, `rebuilding (--force)`,
    `rebuilding (packages.common changed: +tcpdump)`."""
    if force:
        return "rebuilding (--force)"
    if before is None:
        return "building (no earlier build)"
    changed = changes(before, after)
    if not changed:
        return f"rebuilding ({', '.join(missing)} missing)"
    more = len(changed) - SHOWN_CHANGES
    return f"rebuilding ({', '.join(changed[:SHOWN_CHANGES])}{f' and {more} more' if more > 0 else ''})"


def changes(before: Mapping[str, object], after: Mapping[str, object], prefix: str = "") -> list[str]:
    """What differs between two sets of inputs, one phrase per input; nested settings are named in full
    (`consoleproxy.http_port changed: 80 → 8080`)."""
    found = []
    for name in [*after, *(name for name in before if name not in after)]:
        path = f"{prefix}{name}"
        old, new = before.get(name), after.get(name)
        if name not in before:
            found.append(f"{path} added")
        elif name not in after:
            found.append(f"{path} removed")
        elif isinstance(old, dict) and isinstance(new, dict):
            found += changes(old, new, f"{path}.")
        elif old != new:
            found.append(f"{path} changed{_detail(old, new)}")
    return found


def _detail(old: object, new: object) -> str:
    if isinstance(old, list) and isinstance(new, list) and all(_short(item) for item in [*old, *new]):
        items = [f"+{_text(item)}" for item in new if item not in old]
        items += [f"−{_text(item)}" for item in old if item not in new]
        if not items:
            return " (order)"
        more = len(items) - SHOWN_ITEMS
        return ": " + " ".join(items[:SHOWN_ITEMS]) + (f" and {more} more" if more > 0 else "")
    if _short(old) and _short(new):
        return f": {_text(old)} → {_text(new)}"
    return ""


def _short(value: object) -> bool:
    if value is None or isinstance(value, bool | int | float):
        return True
    return isinstance(value, str) and "\n" not in value and len(value) <= SHOWN_VALUE_LENGTH


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)
