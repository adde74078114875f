"""Turn parsed settings into a configured system VM. Each step writes only when content changes."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cloud_setup.cmdline import CommandLine, CommandRunner, Interface, ipv6_interface, valid_ipv4
from cloud_setup.fileops import update_properties, write_if_changed
from cloud_setup.paths import Paths
from cloud_setup.roles import RolePlan, RoleServices, control_nic, plan_for

log = logging.getLogger("cloud_setup")

CLOUD_INIT_DATASOURCES = "etc/cloud/cloud.cfg.d/cloudstack.cfg"
HEADER = "# Written at boot by sysvm-setup from the CloudStack command line; edits are overwritten.\n"
CLOUD_INIT_OFF = "etc/cloud/cloud-init.disabled"  # keeps cloud-init off at boot in the other roles
PACKAGED_UNITS = ("usr/lib/systemd/system", "lib/systemd/system")  # where Debian's packages put units
# cloud-init 24.3 and later (trixie) run every stage in one process, cloud-init-main, and renamed
# cloud-init.service cloud-init-network.service; CloudStack's sharedfsvm.sh and cksnode.sh start it by
# the old name. Where only the new names exist, the old one pulls in the new stages.
CLOUD_INIT_ALIAS = "etc/systemd/system/cloud-init.service"
CLOUD_INIT_ALIAS_UNIT = """\
# Written at boot by sysvm-setup: this cloud-init names its stages differently.
[Unit]
Description=cloud-init up to its network stage, under the name CloudStack's scripts start
Wants=cloud-init-main.service cloud-init-local.service cloud-init-network.service
After=cloud-init-network.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
"""


@dataclass
class Setup:
    paths: Paths
    line: CommandLine
    hypervisor: str
    runner: CommandRunner
    changed: list[Path] = field(default_factory=list)
    _role_services: RoleServices | None = field(default=None, init=False, repr=False)

    @property
    def role_services(self) -> RoleServices:
        """The image's declaration of role services, read once (a missing one is logged once)."""
        if self._role_services is None:
            self._role_services = RoleServices.read(self.paths)
        return self._role_services

    @property
    def plan(self) -> RolePlan:
        return plan_for(self.line, self.role_services)

    @property
    def control_index(self) -> int:
        return control_nic(self.line, self.hypervisor)

    @property
    def control(self) -> Interface | None:
        return self.line.interfaces.get(self.control_index)

    def _write(self, relative: str, content: str, mode: int = 0o644) -> None:
        path = self.paths / relative
        if write_if_changed(path, content, mode):
            self.changed.append(path)

    def apply(self) -> list[Path]:
        log.info("setting up role %s (hypervisor %s, control NIC eth%d)",
                 self.plan.role, self.hypervisor, self.control_index)
        self.hostname()
        self.interfaces()
        self.router_advertisements()
        self.resolver()
        self.sshd()
        self.authorized_key()
        self.firewall()
        if self.plan.user_vm:
            self.user_vm()
        self.agent()
        self.services()
        self.passwords()
        return self.changed

    def hostname(self) -> None:
        name = self.line.get("name")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}", name):
            log.error("name=%r is not a valid host name; keeping the current one", name)
            return
        self._write("etc/hostname", name + "\n")
        hosts = self.paths / "etc/hosts"
        own = f"127.0.1.1\t{name}"
        guest = self.line.interfaces.get(0)
        if self.plan.user_vm and guest is not None:  # as CloudStack's setup: the name is the guest address's
            own = f"{guest.address}\t{name}"
        kept = [line for line in (hosts.read_text().splitlines() if hosts.is_file() else [])
                if not line.split()[:1] or (line.split()[0] not in ("127.0.0.1", "127.0.1.1")
                                            and name not in line.split()[1:])]
        self._write("etc/hosts", "\n".join(["127.0.0.1\tlocalhost", own, *kept]) + "\n")
        if self.paths.root == Path("/"):
            self.runner(["hostname", name])

    def interfaces(self) -> None:
        stanzas = ["auto lo\niface lo inet loopback\n"]
        if not self.line.interfaces:
            stanzas.append("auto eth0\niface eth0 inet dhcp\n")
        gateway = self.line.get("gateway")
        gateway_nic = self._gateway_nic(gateway)
        mtu = self.line.get("mtu")
        for index, interface in sorted(self.line.interfaces.items()):
            lines = [f"auto eth{index}", f"iface eth{index} inet static",
                     f"    address {interface.address}", f"    netmask {interface.netmask}"]
            if mtu.isdigit():
                lines.append(f"    mtu {mtu}")
            if index == gateway_nic:
                lines.append(f"    gateway {gateway}")
            if index == 1 and valid_ipv4(self.line.get("localgw")):
                for cidr in filter(None, self.line.get("mgmtcidr").split(",")):
                    if self._valid_network(cidr):
                        # Best effort, as CloudStack adds them: a route that cannot be added (a gateway
                        # on no NIC) must not take the whole of networking.service down with it.
                        lines.append(f"    up ip route replace {cidr} via {self.line.get('localgw')} dev eth1 || true")
            stanzas.append("\n".join(lines) + "\n")
        for index, address in sorted(self.line.ipv6.items()):
            # As CloudStack's setup_interface_ipv6; the default route comes from CloudStack's configure.py.
            auto = "" if index in self.line.interfaces else f"auto eth{index}\n"
            stanzas.append(f"{auto}iface eth{index} inet6 static\n    address {address.ip}\n"
                           f"    netmask {address.network.prefixlen}\n    accept_ra 1\n    dad-attempts 0\n")
        self._write("etc/network/interfaces", HEADER + "\n".join(stanzas))

    def router_advertisements(self) -> None:
        """radvd's configuration for the guest network's IPv6 prefix, as CloudStack's setup_radvd writes it
        from the guest NIC's address (or guestgw6 and guestcidr6size); CloudStack's router setup enables
        radvd (restore_ipv6), whose unit runs only where this file exists."""
        guest = self.line.ipv6.get(0) or ipv6_interface(self.line.get("guestgw6"), self.line.get("guestcidr6size"))
        if guest is None:
            return
        servers = "".join(f"    RDNSS {server}\n    {{\n        AdvRDNSSLifetime 30;\n    }};\n"
                          for server in (self.line.get("ip6dns1"), self.line.get("ip6dns2"))
                          if ipv6_interface(server, "128") is not None)
        self._write("etc/radvd.conf", HEADER + f"interface eth0\n{{\n    AdvSendAdvert on;\n"
                    f"    MinRtrAdvInterval 5;\n    MaxRtrAdvInterval 15;\n    prefix {guest.network}\n    {{\n"
                    f"        AdvOnLink on;\n        AdvAutonomous on;\n    }};\n{servers}}};\n")

    def _gateway_nic(self, gateway: str) -> int | None:
        if not valid_ipv4(gateway):
            return None
        address = ipaddress.IPv4Address(gateway)
        for index, interface in sorted(self.line.interfaces.items()):
            if address in interface.network:
                return index
        return None

    @staticmethod
    def _valid_network(text: str) -> bool:
        try:
            ipaddress.IPv4Network(text, strict=False)
        except ValueError:
            return False
        return True

    def resolver(self) -> None:
        servers = []
        for key in ("internaldns1", "internaldns2", "dns1", "dns2"):
            value = self.line.get(key)
            if valid_ipv4(value) and value not in servers:
                servers.append(value)
        if not servers:
            log.info("no DNS servers on the command line; leaving resolv.conf as it is")
            return
        domain = self.line.get("domain")
        search = f"search {domain}\n" if re.fullmatch(r"[A-Za-z0-9.-]+", domain) else ""
        self._write("etc/resolv.conf", HEADER + search + "".join(f"nameserver {s}\n" for s in servers[:3]))

    def sshd(self) -> None:
        """Only the listening address: the port is sshd_config's (a second Port line binds it twice)."""
        if self.plan.user_vm:
            # As CloudStack's sharedfsvm.sh and cksnode.sh: the standard port, on every address.
            config = self.paths / "etc/ssh/sshd_config"
            if config.is_file():
                self._write("etc/ssh/sshd_config", re.sub(r"(?m)^Port \d+$", "Port 22", config.read_text()))
            self._write("etc/ssh/sshd_config.d/10-cloudstack-control.conf", HEADER)
            return
        control = self.control
        if control is None:
            log.error("no valid address for control NIC eth%d: sshd listens on every address",
                      self.control_index)
            content = HEADER
        else:
            content = f"{HEADER}ListenAddress {control.address}\n"
        self._write("etc/ssh/sshd_config.d/10-cloudstack-control.conf", content)

    def authorized_key(self) -> None:
        if self.plan.user_vm:  # as CloudStack's setup: no key for root; the user data adds its own users
            if (self.paths / "root/.ssh/authorized_keys").is_file():
                self._write("root/.ssh/authorized_keys", "", 0o600)
            return
        encoded = self.line.get("authorized_key")
        if not encoded:
            return
        try:
            key = base64.b64decode(encoded, validate=True).decode().strip()
        except (binascii.Error, UnicodeDecodeError):
            log.error("authorized_key is not base64 text; root's keys are left as they are")
            return
        (self.paths / "root/.ssh").mkdir(mode=0o700, parents=True, exist_ok=True)
        self._write("root/.ssh/authorized_keys", key + "\n", 0o600)

    def firewall(self) -> None:
        if self.plan.ip_forward:
            self._write("etc/sysctl.d/60-cloudstack-forwarding.conf", "net.ipv4.ip_forward = 1\n")
            self.runner(["sysctl", "-p", str(self.paths / "etc/sysctl.d/60-cloudstack-forwarding.conf")])
        if not self.plan.iptables_file:
            log.info("role %s has no rules file: as in CloudStack's setup, the image's firewall stays", self.plan.role)
            return
        source = self.paths / "etc/iptables" / self.plan.iptables_file
        if not source.is_file():
            log.error("firewall rules %s are missing; leaving the firewall as it is", source)
            return
        rules = _ssh_on_control_nic(source.read_text(), self.control_index)
        self._write("etc/iptables/rules.v4", rules)
        if self.plan.ip_forward and (self.paths / "etc/iptables/rules.v6").is_file():
            self._write("etc/iptables/rules.v6", _ipv6_forwarding(
                (self.paths / "etc/iptables/rules.v6").read_text()))
        for command, rules_file in (("iptables-restore", "etc/iptables/rules.v4"),
                                    ("ip6tables-restore", "etc/iptables/rules.v6")):
            if not (self.paths / rules_file).is_file():
                log.error("firewall rules %s are missing", self.paths / rules_file)
            elif self.runner([command, str(self.paths / rules_file)]) is None:
                log.error("%s rejected %s", command, self.paths / rules_file)
            else:
                log.info("loaded %s", self.paths / rules_file)

    def user_vm(self) -> None:
        """What CloudStack's setup/sharedfsvm.sh and cksnode.sh do before cloud-init runs the user data
        (the handover starts cloud-init): legacy firewall tools, no swap, no reverse path filter, the
        role's kernel modules and sysctls, and ConfigDrive as cloud-init's first data source."""
        for tool in ("iptables", "ip6tables", "arptables", "ebtables"):
            legacy = f"/usr/sbin/{tool}-legacy"
            if (self.paths / legacy).exists() and self.runner(["update-alternatives", "--set", tool, legacy]) is None:
                log.error("could not switch %s to %s", tool, legacy)
        self.runner(["swapoff", "-a"])
        fstab = self.paths / "etc/fstab"
        if fstab.is_file():
            self._write("etc/fstab", re.sub(r"(?m)^(?!#)(.*\sswap\s)", r"#\1", fstab.read_text()))
        role = self.plan.role
        if self.plan.modules:
            self._write(f"etc/modules-load.d/cloudstack-{role}.conf", HEADER + "".join(f"{m}\n" for m in self.plan.modules))
            if self.runner(["modprobe", "-a", *self.plan.modules]) is None:
                log.error("could not load the kernel modules %s", " ".join(self.plan.modules))
        settings = [("net.ipv4.conf.all.rp_filter", "0"), ("net.ipv4.conf.default.rp_filter", "0"), *self.plan.sysctls]
        sysctl_file = f"etc/sysctl.d/60-cloudstack-{role}.conf"
        self._write(sysctl_file, HEADER + "".join(f"{key} = {value}\n" for key, value in settings))
        if self.runner(["sysctl", "-p", str(self.paths / sysctl_file)]) is None:
            log.error("sysctl rejected %s", self.paths / sysctl_file)
        # cloud-init runs when started (newer units skip while cloud-init.disabled exists), by either name.
        off = self.paths / CLOUD_INIT_OFF
        if off.exists():
            off.unlink()
            self.changed.append(off)
        if self._packaged("cloud-init-network.service") and not self._packaged("cloud-init.service"):
            self._write(CLOUD_INIT_ALIAS, CLOUD_INIT_ALIAS_UNIT)
        # cloud-init reads the ConfigDrive the host attaches; ds-identify is not asked (the image disables it).
        self._write("etc/cloud/ds-identify.cfg", "policy: enabled\n")
        datasources = self.paths / CLOUD_INIT_DATASOURCES
        current = datasources.read_text() if datasources.is_file() else "datasource_list: ['CloudStack']\n"
        self._write(CLOUD_INIT_DATASOURCES, re.sub(r"(?m)^datasource_list: .*$",
                                                   "datasource_list: ['ConfigDrive', 'CloudStack']", current))

    def _packaged(self, unit: str) -> bool:
        return any((self.paths / folder / unit).exists() for folder in PACKAGED_UNITS)

    def agent_bundle_present(self) -> bool:
        return any(self.paths.agent_bundle.rglob("*.jar")) if self.paths.agent_bundle.is_dir() else False

    def agent(self) -> None:
        if not self.plan.agent_resource:
            return
        values = {"host": self.line.get("host"), "port": self.line.get("port", "8250"),
                  "zone": self.line.get("zone"), "pod": self.line.get("pod"),
                  "guid": self.line.get("guid"), "name": self.line.get("name"),
                  "resource": self.plan.agent_resource, "instance": "SYSTEMVM"}
        if update_properties(self.paths.agent_properties, values):
            self.changed.append(self.paths.agent_properties)

    def services(self) -> None:
        wanted = set(self.plan.services)
        if "cloud" in wanted and not self.agent_bundle_present():
            log.info("the CloudStack agent bundle is not in %s: the cloud service stays disabled",
                     self.paths.agent_bundle)
            wanted.discard("cloud")
        managed = self.role_services.managed
        if not managed:  # no declaration could be read (logged): every service stays as it is
            return
        states = (self.runner(["systemctl", "is-enabled", *(f"{s}.service" for s in managed)],
                              query=True) or "").split()
        enabled = {service for service, state in zip(managed, states) if state == "enabled"}
        # One call each way: every systemctl call costs seconds under emulation. The units are loaded
        # already, so enabling needs no reload before they are started.
        for verb, now, services in (("enable", "start", sorted(wanted - enabled)),
                                    ("disable", "stop", sorted(enabled - wanted))):
            if not services:
                continue
            units = [f"{service}.service" for service in services]
            if self.runner(["systemctl", verb, "--no-reload", *units]) is None:
                log.error("systemctl %s failed for %s", verb, " ".join(services))
            elif self.runner(["systemctl", now, "--no-block", *units]) is None:
                log.error("systemctl %s failed for %s", now, " ".join(services))
            else:
                log.info("%sd %s", verb, " ".join(services))

    def passwords(self) -> None:
        passwd = self.paths / "etc/passwd"
        users = {line.split(":")[0] for line in passwd.read_text().splitlines()} if passwd.is_file() else set()
        if "cloud" in users:
            if self.runner(["chpasswd"], stdin=f"cloud:{secrets.token_urlsafe(24)}\n") is not None:
                log.info("randomised the cloud user's password")
            else:
                log.error("could not randomise the cloud user's password")
        password = self.line.get("vmpassword")
        if password:
            if self.runner(["chpasswd"], stdin=f"root:{password}\n") is not None:
                log.info("set root's password from vmpassword")
            else:
                log.error("could not set root's password from vmpassword")


def _ipv6_forwarding(rules: str) -> str:
    """A forwarding role's IPv6 rules: what it routes is CloudStack's to filter, in nftables (configure.py's
    ip6_firewall and ip6_acl tables, which see the packets after this chain), so the FORWARD chain accepts."""
    return re.sub(r"^:FORWARD DROP\b", ":FORWARD ACCEPT", rules, flags=re.MULTILINE)


def _ssh_on_control_nic(rules: str, control: int) -> str:
    """As CloudStack's setup does: the rule for 3922 names the control NIC, whatever the file says."""
    return "\n".join(re.sub(r"\beth\d+\b", f"eth{control}", line, count=1) if "3922" in line else line
                     for line in rules.split("\n"))
