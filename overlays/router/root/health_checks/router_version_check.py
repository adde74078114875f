#!/usr/bin/python3
"""basic: the template version and the scripts signature match what the management server expects."""
import re

from utility import CheckFailed, main, read_text

VERSION = re.compile(r"\d+\.\d+\.\d+(?:\.\d+)?")


def check(data: dict) -> str:
    expected = data.get("router_version")
    if not isinstance(expected, dict):
        raise CheckFailed("health check data: router_version is missing")
    release = read_text("HC_RELEASE_FILE")
    found = VERSION.search(release)
    wanted = VERSION.search(str(expected.get("template_version", "")))
    if wanted is None:
        raise CheckFailed("health check data: router_version.template_version holds no version")
    if found is None or found.group(0) != wanted.group(0):
        have = found.group(0) if found else "none"
        raise CheckFailed(f"template version {have} does not match expected {wanted.group(0)}")
    signature = read_text("HC_SIGNATURE_FILE").strip()
    expected_signature = str(expected.get("scripts_signature", "")).strip()
    if expected_signature and signature != expected_signature:
        raise CheckFailed(f"scripts signature {signature} does not match expected {expected_signature}")
    return f"template version {found.group(0)} and scripts signature match"


if __name__ == "__main__":
    main("basic", check)
