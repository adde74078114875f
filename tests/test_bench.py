"""invoke bench's reading of the tier times the last `invoke test` left."""

from __future__ import annotations

import json

from sysvm.bench import TIERS_FILE, _last_test_tiers
from sysvm.workspace import Workspace


def test_the_last_test_runs_tier_times_are_read_and_anything_else_is_not(tmp_path):
    workspace = Workspace(tmp_path / "output")
    assert _last_test_tiers(workspace) == {}  # no `invoke test` yet
    workspace.root.mkdir()
    (workspace.root / TIERS_FILE).write_text("{not json")
    assert _last_test_tiers(workspace) == {}
    (workspace.root / TIERS_FILE).write_text(json.dumps({
        "unit": {"seconds": 61.5, "passed": 400}, "image": {"seconds": 1800.0, "passed": 12}, "total": 3}))
    assert _last_test_tiers(workspace) == {"unit": {"seconds": 61.5, "passed": 400},
                                           "image": {"seconds": 1800.0, "passed": 12}}
