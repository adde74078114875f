#!/usr/bin/python3
"""basic: CPU usage over a short sample of /proc/stat stays at or below systemThresholds maxCpuUsage (%)."""
from __future__ import annotations

import time

from utility import CheckFailed, main, read_text, setting, show, threshold


def sample(source: str) -> tuple[int, int]:
    """(idle ticks, all ticks) from the first line of a /proc/stat copy; iowait counts as idle."""
    words = (read_text(source) or "").split("\n", 1)[0].split()
    if len(words) < 5 or words[0] != "cpu":
        raise CheckFailed(f"{setting(source)} has no cpu line")
    ticks = [int(word) for word in words[1:]]
    return ticks[3] + (ticks[4] if len(ticks) > 4 else 0), sum(ticks)


def check(data: dict) -> str:
    limit = threshold(data, "maxCpuUsage")
    idle_before, total_before = sample("HC_PROC_STAT_PATH")
    time.sleep(float(setting("HC_CPU_SAMPLE_S")))
    idle_after, total_after = sample("HC_PROC_STAT_LATER_PATH")
    elapsed = total_after - total_before
    usage = 0.0 if elapsed <= 0 else 100.0 * (1 - (idle_after - idle_before) / elapsed)
    if usage > limit:
        raise CheckFailed(f"CPU usage {usage:.2f}% is above the threshold of {show(limit)}%")
    return f"CPU usage {usage:.2f}% is within the threshold of {show(limit)}%"


if __name__ == "__main__":
    main("basic", check)
