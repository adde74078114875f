"""The configuration loader under random input (Hypothesis): random YAML documents over the real keys with
random values, random text, and random `--set KEY=VALUE` arguments.

The property: `config.load` either stops with a one-line SysvmError, or gives a Config in which no string
carries a control character and every declared kind (package names, URLs, file name patterns, ...) holds.
No other exception may escape. Bounded: MAX_EXAMPLES cases of each kind, some 10-30 s; the test prints how
many cases it tried, how many loaded, and how long it took.
"""

from __future__ import annotations

import dataclasses
import time
import typing
from pathlib import Path
from typing import Annotated

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sysvm import config
from sysvm.errors import SysvmError

MAX_EXAMPLES = 300
DEFAULTS = yaml.safe_load(config.DEFAULTS_FILE.read_text())


def _key_paths(data: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    if isinstance(data, dict):
        for key, value in data.items():
            paths.append((*prefix, str(key)))
            paths += _key_paths(value, (*prefix, str(key)))
    return paths


KEYS = _key_paths(DEFAULTS)
SCALARS = st.one_of(
    st.text(max_size=30), st.integers(-2**40, 2**40), st.booleans(), st.none(),
    st.sampled_from(["auto", "ttyS0", "4.20.0", "2025-01-31", "2025-13-45", "http://h/debian", "{version}-{hypervisor}",
                     "bash,--hook=evil", "../../etc", "a\nb", "٤.٢٠.٠", "*a", "&a x", "[", "{", "'", '"', "\x00"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                           max_size=3), max_leaves=8)


def _checks(kind: object, value: object, path: str) -> None:
    """Every declared kind of a loaded value holds, and no string has a control character."""
    origin = typing.get_origin(kind)
    if origin is Annotated:
        base, *declared = typing.get_args(kind)
        for check in declared:
            assert check.problem(value) is None, (path, value)
        _checks(base, value, path)
    elif dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind, include_extras=True)
        for field in dataclasses.fields(kind):
            _checks(hints[field.name], getattr(value, field.name), f"{path}.{field.name}")
    elif origin is list:
        for index, item in enumerate(value):
            _checks(typing.get_args(kind)[0], item, f"{path}.{index}")
    elif origin is dict:
        for key, item in value.items():
            assert not any(ord(c) < 32 or ord(c) == 127 for c in key), (path, key)
            _checks(typing.get_args(kind)[1], item, f"{path}.{key}")
    elif isinstance(value, str):
        assert not any(ord(c) < 32 or ord(c) == 127 for c in value), (path, value)


def _load(user: Path | None, overrides: list[str], tally: dict[str, int]) -> None:
    tally["cases"] += 1
    try:
        loaded = config.load(user, overrides)
    except SysvmError as error:
        assert "\n" not in str(error) and "\r" not in str(error), str(error)
        return
    tally["loaded"] += 1
    _checks(config.Config, loaded, "")


def test_random_documents_and_set_arguments_load_or_fail_in_one_line(tmp_path, record_property):
    tally = {"cases": 0, "loaded": 0}
    started = time.monotonic()
    user = tmp_path / "user.yaml"

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=False, database=None,
              phases=(Phase.generate,), suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=4))
    def document(patches: list[tuple[tuple[str, ...], object]]) -> None:
        data: dict = {}
        for path, value in patches:
            target = data
            for part in path[:-1]:
                target = target.setdefault(part, {}) if isinstance(target.get(part, {}), dict) else {}
            target[path[-1]] = value
        user.write_text(yaml.safe_dump(data, allow_unicode=True))
        _load(user, [], tally)

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, phases=(Phase.generate,),
              suppress_health_check=list(HealthCheck))
    @given(st.text(max_size=200))
    def text(body: str) -> None:
        user.write_text(body, errors="surrogateescape")
        _load(user, [], tally)

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, phases=(Phase.generate,),
              suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.one_of(st.sampled_from(KEYS).map(".".join), st.text(max_size=12)),
                              st.one_of(SCALARS.map(str), st.text(max_size=40))), max_size=3))
    def assignments(pairs: list[tuple[str, str]]) -> None:
        _load(None, [f"{key}={value}" for key, value in pairs], tally)

    document()
    text()
    assignments()
    took = time.monotonic() - started
    print(f"fuzz config: {tally['cases']} cases, {tally['loaded']} loaded, {took:.1f} s")
    record_property("fuzz_config_cases", tally["cases"])  # into the JUnit XML, where CI's figures are read
    record_property("fuzz_config_seconds", round(took, 1))
    assert tally["cases"] >= 3 * MAX_EXAMPLES * 0.9
