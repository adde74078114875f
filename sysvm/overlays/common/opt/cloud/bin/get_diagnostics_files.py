#!/usr/bin/python3
"""Diagnostics collector entry point (see /opt/cloud/lib/cloud_setup/diagnostics.py)."""
import sys

sys.path.insert(0, "/opt/cloud/lib")

from cloud_setup.diagnostics import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
