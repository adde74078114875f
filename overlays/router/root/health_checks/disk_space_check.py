#!/usr/bin/python3
"""basic: free space on the root filesystem stays above thresholds.min_free_disk_mb."""
import os

from utility import CheckFailed, main, setting, threshold


def check(data: dict) -> str:
    minimum = threshold(data, "min_free_disk_mb", 100)
    stats = os.statvfs(setting("HC_DISK_PATH"))
    free_mb = stats.f_bavail * stats.f_frsize / 2**20
    if free_mb < minimum:
        raise CheckFailed(f"free disk space {free_mb:.0f} MB is below {minimum:.0f} MB")
    return f"free disk space {free_mb:.0f} MB (at least {minimum:.0f} MB needed)"


if __name__ == "__main__":
    main("basic", check)
