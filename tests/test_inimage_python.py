"""The code that runs inside the image works on every python3 the image may carry, 3.7 (buster) to 3.13 (trixie).

Statically for the oldest: vermin, plus what vermin cannot attribute (generic aliases and X | Y unions
evaluated at run time, string and path methods newer than 3.7, syntax by Python's own parser). buster's
3.7 cannot be run here: its packages are only on Debian's archive mirror, which these machines cannot
reach. By running: the in-image unit tests under bullseye's 3.9 and trixie's 3.13, each in a small
chroot cached under output/cache/chroots/ (about a minute to make, seconds to reuse).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sysvm import chroots

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ROOT / "sysvm/overlays"
OLDEST = (3, 7)

GENERIC_BUILTINS = {"list", "dict", "tuple", "set", "frozenset", "type"}
TYPE_NAMES = GENERIC_BUILTINS | {"int", "float", "complex", "str", "bytes", "bytearray", "bool", "object"}
GENERIC_CLASSES = {("re", "Pattern"), ("re", "Match"), ("os", "PathLike"), ("subprocess", "CompletedProcess"),
                   ("subprocess", "Popen")}
# Methods and keywords vermin cannot tie to a type, since it does not know the receiver's.
NEWER_METHODS = {"removeprefix": "3.9", "removesuffix": "3.9", "is_relative_to": "3.9", "with_stem": "3.9",
                 "hardlink_to": "3.10", "bit_count": "3.10"}
NEWER_KEYWORDS = {("unlink", "missing_ok"): "3.8", ("zip", "strict"): "3.10", ("dataclass", "slots"): "3.10",
                  ("dataclass", "kw_only"): "3.10", ("write_text", "newline"): "3.10"}


def python_files(folder: Path) -> list[Path]:
    """Every file under `folder` that python3 runs: *.py and scripts with a python shebang."""
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        first_line = path.read_bytes()[:128].split(b"\n")[0]
        if path.suffix == ".py" or (first_line.startswith(b"#!") and b"python" in first_line):
            found.append(path)
    return found


class RuntimeChecker(ast.NodeVisitor):
    """Finds what Python 3.7 cannot evaluate in code that runs, leaving out annotations it never evaluates."""

    def __init__(self, tree: ast.Module) -> None:
        self.problems: list[tuple[int, str]] = []
        self.lazy_annotations = any(isinstance(node, ast.ImportFrom) and node.module == "__future__"
                                    and any(alias.name == "annotations" for alias in node.names) for node in tree.body)
        self.abc_names = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                          and node.module == "collections.abc" for alias in node.names}
        self.depth = 0

    def report(self, node: ast.AST, message: str) -> None:
        self.problems.append((getattr(node, "lineno", 0), message))

    def annotation(self, node: ast.AST | None, local: bool = False) -> None:
        if node is not None and not self.lazy_annotations and not local:
            self.visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:
            self.visit(decorator)
        arguments = node.args
        for default in [*arguments.defaults, *[d for d in arguments.kw_defaults if d is not None]]:
            self.visit(default)
        for argument in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs, arguments.vararg,
                         arguments.kwarg]:
            if argument is not None:
                self.annotation(argument.annotation)
        self.annotation(node.returns)
        self.depth += 1
        for statement in node.body:
            self.visit(statement)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.annotation(node.annotation, local=self.depth > 0)
        self.visit(node.target)
        if node.value is not None:
            self.visit(node.value)

    def generic_name(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name) and (node.id in GENERIC_BUILTINS or node.id in self.abc_names):
            return node.id
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                (node.value.id, node.attr) in GENERIC_CLASSES:
            return f"{node.value.id}.{node.attr}"
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "collections.abc":
            return f"collections.abc.{node.attr}"
        return None

    def visit_Subscript(self, node: ast.Subscript) -> None:
        name = self.generic_name(node.value)
        if name:
            self.report(node, f"{name}[...] evaluated at run time needs 3.9")
        self.generic_visit(node)

    def typeish(self, node: ast.AST) -> bool:
        return (isinstance(node, ast.Constant) and node.value is None) or \
            (isinstance(node, ast.Name) and node.id in TYPE_NAMES) or \
            (isinstance(node, ast.Subscript) and self.generic_name(node.value) is not None)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.BitOr) and (self.typeish(node.left) or self.typeish(node.right)):
            self.report(node, f"the union {ast.unparse(node)} evaluated at run time needs 3.10")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        called = node.func.attr if isinstance(node.func, ast.Attribute) else \
            node.func.id if isinstance(node.func, ast.Name) else ""
        if isinstance(node.func, ast.Attribute) and called in NEWER_METHODS:
            self.report(node, f".{called}() needs {NEWER_METHODS[called]}")
        for keyword in node.keywords:
            if (called, keyword.arg) in NEWER_KEYWORDS:
                self.report(node, f"{called}({keyword.arg}=...) needs {NEWER_KEYWORDS[called, keyword.arg]}")
        self.generic_visit(node)


def runtime_problems(source: str, name: str) -> list[str]:
    try:
        ast.parse(source, name, feature_version=OLDEST)
    except SyntaxError as error:
        return [f"{name}:{error.lineno}: syntax newer than {OLDEST[0]}.{OLDEST[1]}: {error.msg}"]
    tree = ast.parse(source, name)
    checker = RuntimeChecker(tree)
    checker.visit(tree)
    return [f"{name}:{line}: {message}" for line, message in sorted(checker.problems)]


def vermin_problems(paths: list[Path]) -> list[str]:
    """vermin's findings for the oldest Python, one "file:line: feature needs X" line each."""
    vermin = Path(sys.executable).with_name("vermin")
    assert vermin.is_file(), f"{vermin}: missing; vermin comes with the test extra (pip install -e '.[test]')"
    done = subprocess.run([str(vermin), f"--target={OLDEST[0]}.{OLDEST[1]}-", "--no-tips",
                           "--violations", "--format", "parsable", *map(str, paths)],
                          capture_output=True, text=True, timeout=300)
    problems = []
    for line in done.stdout.splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and fields[0] and fields[1] and fields[5]:
            problems.append(f"{fields[0]}:{fields[1]}: {':'.join(fields[5:])} needs {fields[4]}")
    if done.returncode not in (0, 1) or (done.returncode == 1 and not problems):
        pytest.fail(f"vermin did not run as expected (exit {done.returncode}): {done.stdout}{done.stderr}")
    return problems


def problems_by_file(paths: list[Path]) -> dict[str, list[str]]:
    """Problems per file (path relative to the repository), each line starting with that path."""
    found: dict[str, list[str]] = {}
    for problem in vermin_problems(paths):
        name = str(Path(problem.split(":")[0]).relative_to(ROOT))
        found.setdefault(name, []).append(name + problem[problem.index(":"):])
    for path in paths:
        name = str(path.relative_to(ROOT))
        found.setdefault(name, []).extend(runtime_problems(path.read_text(), name))
    return {name: problems for name, problems in found.items() if problems}


def test_overlay_code_runs_on_python37():
    files = python_files(OVERLAYS)
    assert len(files) >= 20 and OVERLAYS / "router/root/monitorServices.py" in files
    found = problems_by_file(files)
    assert found == {}, "\n".join(problem for problems in found.values() for problem in problems)


KNOWN_PROBLEMS = '''
from __future__ import annotations
import datetime
from collections.abc import Callable

Runner = Callable[..., "str | None"]
Alias = list[str]
Maybe = int | None


def stamp(value: object, text: str, path: object) -> object:
    local: dict[str, int | None] = {}
    if isinstance(value, int | float):
        path.unlink(missing_ok=True)
    return datetime.datetime.now(datetime.UTC), text.removesuffix("/32"), local


def fine(argv: list[str] | None = None) -> tuple[int, str] | None:
    return None
'''


def test_the_check_finds_what_python37_cannot_run(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(KNOWN_PROBLEMS)
    found = "\n".join(vermin_problems([sample]) + runtime_problems(KNOWN_PROBLEMS, "sample.py"))
    for expected in ("sample.py:6: Callable[...] evaluated at run time needs 3.9",
                     "sample.py:7: list[...] evaluated at run time needs 3.9",
                     "sample.py:8: the union int | None evaluated at run time needs 3.10",
                     "sample.py:13: the union int | float evaluated at run time needs 3.10",
                     "sample.py:14: unlink(missing_ok=...) needs 3.8",
                     "sample.py:15: .removesuffix() needs 3.9",
                     f"{sample}:15: 'datetime.UTC' member needs 3.11"):
        assert expected in found, found
    # Annotations are strings under `from __future__ import annotations`: 3.7 never evaluates them.
    assert not re.search(r"sample\.py:(12|18):", found), found
    walrus = runtime_problems("if (n := 1):\n    pass\n", "walrus.py")
    assert walrus and walrus[0].startswith("walrus.py:1: syntax newer than 3.7"), walrus


# ----------------------------------------------------------------------------- under each release's python3

# What the chroot's python3 must report: the proof that the tests ran under the release's own Python.
RELEASE_PYTHON = {"bullseye": "3.9", "trixie": "3.13"}
IN_IMAGE_TESTS = ("tests/test_health_checks.py", "tests/test_cloud_setup.py")


def collected_on_host() -> int:
    # Every tier: the chroot runs them all (as root, its render a stand-in), as pyproject.toml is not there.
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "",
                           *IN_IMAGE_TESTS], cwd=ROOT, capture_output=True, text=True, timeout=300)
    match = re.search(r"^(\d+) tests? collected", done.stdout, re.MULTILINE)
    assert match, done.stdout + done.stderr
    return int(match.group(1))


def host_values(folder: Path) -> dict[str, object]:
    """What the in-image tests take from the builder, computed here by the builder itself."""
    from sysvm import config
    from sysvm.render import render
    from sysvm.workspace import Workspace

    tree = render(config.load(), Workspace(folder / "output")).tree
    shutil.copytree(tree, folder / "sysvm/rendered-tree", symlinks=True)
    return {"rendered_tree": "/srv/" + folder.name + "/sysvm/rendered-tree"}


def stage(folder: Path) -> None:
    """The repository parts the in-image tests read, laid out as beside the repository, in `folder`."""
    project = folder / "sysvm"
    shutil.copytree(OVERLAYS, project / "sysvm/overlays", symlinks=True)
    (project / "tests").mkdir(parents=True)
    for name in (*IN_IMAGE_TESTS, "tests/__init__.py", "tests/tiers.py", "sysvm/suites/__init__.py",
                 "sysvm/suites/cloudstack_health.py"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, project / name)
    shutil.copy2(ROOT / "tests/fixtures/chroot_conftest.py", project / "tests/conftest.py")
    from tests.test_health_checks import CLOUDSTACK

    shutil.copytree(CLOUDSTACK, folder / "shared/cloudstack", symlinks=True)
    values = host_values(folder)
    (folder / "host-values.json").write_text(json.dumps(values))


def clear_dead_runs(folder: Path) -> None:
    """Remove what runs killed before their clean-up left in the cached chroot (run-<pid>-*)."""
    for path in folder.glob("run-*-*"):
        pid = path.name.split("-")[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)


@pytest.mark.mirror
@pytest.mark.parametrize("release", sorted(RELEASE_PYTHON))
def test_in_image_unit_tests_pass_under_the_releases_python(release):
    chroot = chroots.ensure(release)
    expected = collected_on_host()
    clear_dead_runs(chroot.root / "srv")
    folder = Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=chroot.root / "srv"))
    try:
        stage(folder)
        inside = f"/srv/{folder.name}"
        done = chroots.run_in(chroot, ["python3", "-m", "pytest", "-p", "no:cacheprovider", "-rfEsx",
                                       f"--basetemp={inside}/tmp", f"--rootdir={inside}/sysvm",
                                       *(f"{inside}/sysvm/{name}" for name in IN_IMAGE_TESTS)],
                              env={"SYSVM_HOST_VALUES": f"{inside}/host-values.json"}, timeout=1200)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report = done.stdout + done.stderr
    assert re.search(rf"^platform linux -- Python {re.escape(RELEASE_PYTHON[release])}\.\d+", report, re.MULTILINE), report
    assert done.returncode == 0, report
    summary = report.strip().splitlines()[-1]
    assert re.fullmatch(rf"=+ {expected} passed(, \d+ warnings?)? in [\d.]+s( \([\d:]+\))? =+", summary), summary
