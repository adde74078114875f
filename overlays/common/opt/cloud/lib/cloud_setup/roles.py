"""What each system VM role needs: its control NIC, its firewall file, its services, its agent resource."""

from __future__ import annotations

from dataclasses import dataclass

from cloud_setup.cmdline import CommandLine

# Every service whose state depends on the role; anything a role does not enable is disabled.
MANAGED_SERVICES = ("cloud", "apache2", "dnsmasq", "haproxy", "keepalived", "conntrackd", "radvd", "nfs-common")
ROUTER_LIKE = ("router", "vpcrouter", "dhcpsrvr", "ilbvm", "elbvm")


@dataclass(frozen=True)
class RolePlan:
    role: str
    iptables_file: str
    services: tuple[str, ...]  # enabled; the rest of MANAGED_SERVICES is disabled
    agent_resource: str  # empty: no CloudStack agent runs in this role
    ip_forward: bool


_PLANS = {
    "consoleproxy": RolePlan("consoleproxy", "iptables-consoleproxy", ("cloud",),
                             "com.cloud.agent.resource.consoleproxy.ConsoleProxyResource", False),
    "secstorage": RolePlan("secstorage", "iptables-secstorage", ("cloud", "apache2"),
                           "org.apache.cloudstack.storage.resource.NfsSecondaryStorageResource", False),
    "router": RolePlan("router", "iptables-router", ("apache2", "dnsmasq", "haproxy"), "", True),
    "vpcrouter": RolePlan("vpcrouter", "iptables-vpcrouter", ("apache2", "dnsmasq", "haproxy"), "", True),
    "dhcpsrvr": RolePlan("dhcpsrvr", "iptables-router", ("apache2", "dnsmasq"), "", False),
    "ilbvm": RolePlan("ilbvm", "iptables-router", ("haproxy",), "", True),
    "elbvm": RolePlan("elbvm", "iptables-router", ("haproxy",), "", True),
}
DEFAULT_PLAN = RolePlan("default", "iptables-default", (), "", False)


def plan_for(line: CommandLine) -> RolePlan:
    plan = _PLANS.get(line.role, DEFAULT_PLAN)
    if plan.role in ("router", "vpcrouter") and line.flag("redundant_router"):
        services = tuple(s for s in plan.services if s != "dnsmasq") + ("keepalived", "conntrackd")
        return RolePlan(plan.role, plan.iptables_file, services, plan.agent_resource, plan.ip_forward)
    return plan


def control_nic(line: CommandLine, hypervisor: str) -> int:
    """Which ethN carries the link-local control address (sshd and the 3922 rule)."""
    role = line.role
    if role in ("consoleproxy", "secstorage"):
        return 1 if hypervisor in ("vmware", "hyperv") else 0
    if role in ("router", "ilbvm"):
        return 1
    if role == "vpcrouter":
        return 0
    if role in ("dhcpsrvr", "elbvm"):
        return 0 if line.flag("sshonguest") else 1
    link_local = [i.index for i in line.interfaces.values() if i.is_link_local]
    return link_local[0] if link_local else 0
