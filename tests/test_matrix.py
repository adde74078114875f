"""invoke matrix checks every release's settings before it builds anything."""

from __future__ import annotations

import pytest

from sysvm.errors import SysvmError
from sysvm.matrix import matrix


def test_no_release_is_an_error():
    with pytest.raises(SysvmError, match="--release: name at least one Debian release"):
        matrix("", [], [])


def test_a_bad_release_stops_before_any_release_is_built(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    built = []
    monkeypatch.setattr("sysvm.matrix.build", lambda config, workspace: built.append(config))
    with pytest.raises(SysvmError, match="unknown release 'hamm'"):
        matrix("", [], ["bookworm", "hamm"])
    assert built == []
    assert not (tmp_path / "output").exists(), "bad settings write nothing, not even output/'s marker"
