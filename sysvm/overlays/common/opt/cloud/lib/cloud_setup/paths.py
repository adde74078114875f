"""Every file the setup reads or writes, relative to a root so that tests can point it at a folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path = Path("/")

    def __truediv__(self, relative: str) -> Path:
        return self.root / relative.lstrip("/")

    @property
    def cmdline(self) -> Path:
        return self / "var/cache/cloud/cmdline"

    @property
    def cmdline_json(self) -> Path:
        return self / "var/cache/cloud/cmd_line.json"

    @property
    def cmdline_override(self) -> Path:
        return self / "mnt/cmdline"

    @property
    def log(self) -> Path:
        return self / "var/log/cloud.log"

    @property
    def agent_properties(self) -> Path:
        return self / "usr/local/cloud/systemvm/conf/agent.properties"

    @property
    def agent_bundle(self) -> Path:
        return self / "usr/local/cloud/systemvm"

    # What a CloudStack host copies in at every start (4.17+), and where CloudStack's scripts keep state.
    @property
    def host_scripts(self) -> Path:
        return self / "var/cache/cloud/cloud-scripts.tgz"

    @property
    def host_agent_zip(self) -> Path:
        return self / "var/cache/cloud/agent.zip"

    @property
    def kept_scripts(self) -> Path:
        return self / "usr/share/cloud/cloud-scripts.tgz"

    @property
    def signature(self) -> Path:
        return self / "var/cache/cloud/cloud-scripts-signature"

    @property
    def patch_required(self) -> Path:
        return self / "var/cache/cloud/patch.required"

    @property
    def boot_up_done(self) -> Path:
        return self / "var/cache/cloud/boot_up_done"

    @property
    def bootstrap(self) -> Path:
        return self / "opt/cloud/bin/setup/bootstrap.sh"

    @property
    def postinit(self) -> Path:
        return self / "opt/cloud/bin/setup/postinit.sh"
