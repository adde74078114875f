#!/usr/bin/python3
"""basic: free space on the root filesystem is at least systemThresholds minDiskNeeded (MB)."""
from __future__ import annotations

import os

from utility import CheckFailed, main, setting, show, threshold


def check(data: dict) -> str:
    minimum = threshold(data, "minDiskNeeded")
    path = setting("HC_DISK_PATH")
    stats = os.statvfs(path)
    free_mb = stats.f_bavail * stats.f_frsize / 2**20
    if free_mb < minimum:
        raise CheckFailed(f"free space on {path} is {free_mb:.1f} MB, below the {show(minimum)} MB needed")
    return f"free space on {path} is {free_mb:.1f} MB (at least {show(minimum)} MB needed)"


if __name__ == "__main__":
    main("basic", check)
