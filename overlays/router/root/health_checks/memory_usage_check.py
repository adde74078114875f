#!/usr/bin/python3
"""basic: memory in use (MemTotal - MemAvailable) stays below thresholds.max_memory_percent."""
from utility import CheckFailed, main, read_text, setting, threshold


def check(data: dict) -> str:
    limit = threshold(data, "max_memory_percent", 95)
    values = {}
    for line in read_text("HC_MEMINFO_PATH").splitlines():
        key, _, rest = line.partition(":")
        if rest.split():
            values[key] = int(rest.split()[0])
    if not values.get("MemTotal") or "MemAvailable" not in values:
        raise CheckFailed(f"{setting('HC_MEMINFO_PATH')} lacks MemTotal or MemAvailable")
    usage = 100.0 * (values["MemTotal"] - values["MemAvailable"]) / values["MemTotal"]
    if usage > limit:
        raise CheckFailed(f"memory usage {usage:.1f}% is above {limit:.0f}%")
    return f"memory usage {usage:.1f}% is within {limit:.0f}%"


if __name__ == "__main__":
    main("basic", check)
