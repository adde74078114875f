"""Where the files sysvm ships with its code are: templates, overlay layers, Packer scripts, the default
configuration and the image suites. They are package data, so they are found the same way in a checkout
and in an installed sysvm, whatever the current directory."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from sysvm.errors import SysvmError


def resource(*parts: str) -> Path:
    """The path of a file or folder inside the sysvm package, e.g. resource("templates", "common")."""
    root = files("sysvm")
    # Render copies whole trees and Packer and pytest are handed paths, so a zipped install would not do.
    if not isinstance(root, Path):
        raise SysvmError(f"sysvm's files are not on the file system ({root}): install sysvm from a wheel or checkout")
    return root.joinpath(*parts)
