"""What each system VM role needs: its control NIC, its firewall file, its services, its agent resource."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field

from cloud_setup.cmdline import CommandLine
from cloud_setup.paths import Paths

log = logging.getLogger("cloud_setup")

# Which services run in which role is declared once, in the builder's sysvm.yaml (services), and
# rendered into the image here; this module only reads it.
DECLARATION = "opt/cloud/lib/cloud_setup/services.json"
ROUTER_LIKE = ("router", "vpcrouter", "dhcpsrvr", "ilbvm", "elbvm")


@dataclass(frozen=True)
class RoleServices:
    """The rendered declaration: the services whose state depends on the role, and each role's own."""

    managed: tuple[str, ...] = ()  # every one the setup enables or disables; nothing else is touched
    roles: dict[str, tuple[str, ...]] = field(default_factory=dict)
    redundant_roles: tuple[str, ...] = ()  # roles whose command line may say redundant_router=true
    redundant_instead_of: tuple[str, ...] = ()  # left off by a redundant router
    redundant_add: tuple[str, ...] = ()  # run by a redundant router

    @classmethod
    def read(cls, paths: Paths) -> RoleServices:
        """The declaration under `paths`; without a readable one (a broken image) no service is touched."""
        path = paths / DECLARATION
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            redundant = data["redundant_router"]
            return cls(tuple(data["managed"]),
                       {role: tuple(names) for role, names in data["roles"].items()},
                       tuple(redundant["roles"]), tuple(redundant["instead_of"]), tuple(redundant["add"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            log.error("cannot read the role services from %s (%s): services are left as they are", path, error)
            return cls()

    def for_role(self, role: str, redundant: bool) -> tuple[str, ...]:
        """The services `role` enables; the rest of `managed` is disabled."""
        services = self.roles.get(role, ())
        if redundant and role in self.redundant_roles:
            kept = tuple(s for s in services if s not in self.redundant_instead_of)
            services = kept + tuple(s for s in self.redundant_add if s not in kept)
        return services


@dataclass(frozen=True)
class RolePlan:
    role: str
    iptables_file: str
    agent_resource: str  # empty: no CloudStack agent runs in this role
    ip_forward: bool
    services: tuple[str, ...] = ()  # enabled; the rest of RoleServices.managed is disabled
    # A User VM to the host (CloudStack 4.20+ deploys Shared FileSystem VMs and Kubernetes nodes from the
    # template): no control network and no scripts from the host; sshd on 22, the work in cloud-init user data.
    user_vm: bool = False
    modules: tuple[str, ...] = ()  # kernel modules loaded at every boot
    sysctls: tuple[tuple[str, str], ...] = ()  # set at every boot (after the modules that provide them)


_PLANS = {
    "consoleproxy": RolePlan("consoleproxy", "iptables-consoleproxy",
                             "com.cloud.agent.resource.consoleproxy.ConsoleProxyResource", False),
    "secstorage": RolePlan("secstorage", "iptables-secstorage",
                           "org.apache.cloudstack.storage.resource.NfsSecondaryStorageResource", False),
    "router": RolePlan("router", "iptables-router", "", True),
    "vpcrouter": RolePlan("vpcrouter", "iptables-vpcrouter", "", True),
    "dhcpsrvr": RolePlan("dhcpsrvr", "iptables-router", "", False),
    "ilbvm": RolePlan("ilbvm", "iptables-router", "", True),
    "elbvm": RolePlan("elbvm", "iptables-router", "", True),
    "sharedfsvm": RolePlan("sharedfsvm", "", "", False, user_vm=True),
    # What kubeadm's preflight checks beside swap and IP forwarding (from the CKS ISO, it runs on this image).
    "cksnode": RolePlan("cksnode", "", "", True, user_vm=True, modules=("overlay", "br_netfilter"),
                        sysctls=(("net.bridge.bridge-nf-call-iptables", "1"),
                                 ("net.bridge.bridge-nf-call-ip6tables", "1"))),
}
USER_VM_ROLES = tuple(role for role, plan in _PLANS.items() if plan.user_vm)
DEFAULT_PLAN = RolePlan("default", "iptables-default", "", False)


def plan_for(line: CommandLine, services: RoleServices) -> RolePlan:
    plan = _PLANS.get(line.role, DEFAULT_PLAN)
    return dataclasses.replace(plan, services=services.for_role(plan.role, line.flag("redundant_router")))


def control_nic(line: CommandLine, hypervisor: str) -> int:
    """Which ethN carries the link-local control address (sshd and the 3922 rule)."""
    role = line.role
    if role in USER_VM_ROLES:  # its one NIC, on a guest network
        return 0
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
