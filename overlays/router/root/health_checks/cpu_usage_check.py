#!/usr/bin/python3
"""basic: CPU usage over a short sample of /proc/stat stays below thresholds.max_cpu_percent."""
import time

from utility import CheckFailed, main, read_text, setting, threshold


def sample(source: str) -> tuple[int, int]:
    fields = [int(v) for v in read_text(source).split("\n")[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return idle, sum(fields)


def check(data: dict) -> str:
    limit = threshold(data, "max_cpu_percent", 95)
    idle1, total1 = sample("HC_PROC_STAT_PATH")
    time.sleep(float(setting("HC_CPU_SAMPLE_S")))
    idle2, total2 = sample("HC_PROC_STAT_LATER_PATH")
    elapsed = total2 - total1
    usage = 0.0 if elapsed <= 0 else 100.0 * (1 - (idle2 - idle1) / elapsed)
    if usage > limit:
        raise CheckFailed(f"CPU usage {usage:.1f}% is above {limit:.0f}%")
    return f"CPU usage {usage:.1f}% is within {limit:.0f}%"


if __name__ == "__main__":
    main("basic", check)
