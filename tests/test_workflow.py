"""The shipped GitHub Actions workflow: actionlint accepts it, and it builds what `sysvm release` assembles."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github/workflows/release.yml"
ACTIONLINT = ROOT / ".venv/bin/actionlint"  # ./run builds it


def test_actionlint_accepts_the_release_workflow():
    assert ACTIONLINT.is_file(), "./run builds actionlint into .venv/bin"
    linted = subprocess.run([str(ACTIONLINT), "-no-color", str(WORKFLOW)], capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_each_architecture_builds_on_its_own_runner_and_the_release_job_comes_last():
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    matrix = jobs["build"]["strategy"]["matrix"]
    runners = {entry["architecture"]: entry["runner"] for entry in matrix["include"]}
    assert set(matrix["architecture"]) == {"amd64", "arm64"} and runners["arm64"].endswith("-arm")
    assert jobs["release"]["needs"] == "build"
    assemble = next(step["run"] for step in jobs["release"]["steps"] if step.get("name") == "Assemble")
    # On a native runner each build writes output/artifacts (sysvm.workspace keeps output/artifacts-<arch> for
    # cross builds only); each upload is named <release>-<architecture> and downloaded into built/ by that name.
    upload = next(step for step in jobs["build"]["steps"] if step.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["with"]["path"] == "output/artifacts/"
    assert upload["with"]["name"] == "${{ matrix.release }}-${{ matrix.architecture }}"
    assert "invoke release --out" in assemble
    assert all(f'--folder "built/${{{{ matrix.release }}}}-{arch}"' in assemble for arch in matrix["architecture"])
