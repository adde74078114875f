#!/usr/bin/python3
"""basic: memory in use (MemTotal - MemAvailable) stays at or below systemThresholds maxMemoryUsage (%)."""
from __future__ import annotations

from utility import CheckFailed, main, read_text, setting, show, threshold


def check(data: dict) -> str:
    limit = threshold(data, "maxMemoryUsage")
    values = {}
    for line in (read_text("HC_MEMINFO_PATH") or "").splitlines():
        key, _, rest = line.partition(":")
        if rest.split():
            values[key] = int(rest.split()[0])
    if not values.get("MemTotal") or "MemAvailable" not in values:
        raise CheckFailed(f"{setting('HC_MEMINFO_PATH')} lacks MemTotal or MemAvailable")
    usage = 100.0 * (values["MemTotal"] - values["MemAvailable"]) / values["MemTotal"]
    if usage > limit:
        raise CheckFailed(f"memory usage {usage:.2f}% is above the threshold of {show(limit)}%")
    return f"memory usage {usage:.2f}% is within the threshold of {show(limit)}%"


if __name__ == "__main__":
    main("basic", check)
