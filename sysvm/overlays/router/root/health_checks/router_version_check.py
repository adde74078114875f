#!/usr/bin/python3
"""basic: the template version and the scripts signature are the ones the management server knows.

The management server learnt both from get_template_version.sh (the content of /etc/cloudstack-release,
then the signature file) and sends them back as routerVersion templateVersion and scriptsVersion; each
is compared with the first line of its file.
"""
from __future__ import annotations

from utility import CheckFailed, CheckUnknown, main, read_text, records, setting


def first_line(name: str) -> str:
    return ((read_text(name) or "").splitlines() or [""])[0].strip()


def check(data: dict) -> str:
    entries = records(data, "routerVersion")
    if not entries:
        raise CheckUnknown("no routerVersion in the health check data")
    expected = entries[0]
    problems = []
    compared = []
    for key, source, what in (("templateVersion", "HC_RELEASE_FILE", "template version"),
                              ("scriptsVersion", "HC_SIGNATURE_FILE", "scripts signature")):
        if key not in expected:
            continue
        found = first_line(source)
        compared.append(what)
        if found != expected[key]:
            problems.append(f"{what} in {setting(source)} is {found!r}, the management server expects {expected[key]!r}")
    if problems:
        raise CheckFailed("; ".join(problems))
    if not compared:
        raise CheckUnknown("routerVersion holds neither templateVersion nor scriptsVersion")
    return f"{' and '.join(compared)} match"


if __name__ == "__main__":
    main("basic", check)
