"""The management server's side of a router in verify: the cloud around it (guest VMs, public addresses,
rules) and the JSON documents that configure it, in the shapes of CloudStack's Java models
(core/.../virtualnetwork/model, serialized by Gson with lower-case-with-underscores names and nulls left
out) and in the order a management server sends them when a router starts
(VirtualNetworkApplianceManagerImpl.finalizeCommandsOnStart): one vr_cfg.sh batch, then single
update_config.py calls, as a VM that starts later gets its password.

The suites read the same facts (`cloud_facts`) to check each effect from a guest's side.
"""

from __future__ import annotations

import base64
import uuid

from sysvm.qemu import nic_mac
from sysvm.routernet import GUEST_WEB_PORTS, GuestVM, Side

GUEST_NETWORK, GUEST_MASK, GUEST_PREFIX = "10.1.1.0/24", "255.255.255.0", 24  # QEMU's user network answers on .2, .3
PUBLIC_NETWORK, PUBLIC_IP, PUBLIC_GATEWAY = "192.168.1.0/24", "192.168.1.30", "192.168.1.2"
PUBLIC_PREFIX = 24
VPC_CIDR = "10.1.0.0/16"
# A VPC's private gateway: the router's address on the private network, the next hop there, and a network
# beyond it that a static route reaches.
PRIVATE_NETWORK, PRIVATE_GATEWAY_IP, PRIVATE_NEXT_HOP = "10.20.0.0/24", "10.20.0.10", "10.20.0.1"
ROUTED_NETWORK, ROUTED_HOST = "192.168.50.0/24", "192.168.50.1"
S2S_PEER, S2S_PEER_CIDR = "203.0.113.10", "172.16.0.0/24"  # a site-to-site VPN's far end (never reached)
ROUTER_GUEST_IP = "10.1.1.1"
DOMAIN, UPSTREAM_DNS = "cloud.test", "192.168.1.3"
GUEST_VMS = (GuestVM("vm-1", "02:00:4c:5f:00:01", "10.1.1.5"), GuestVM("vm-2", "02:00:4c:5f:00:02", "10.1.1.6"))
STATIC_NAT_IP = "192.168.1.31"  # one-to-one to vm-2
# The guest network's IPv6 prefix, which the router advertises (the guests take addresses by SLAAC) and
# routes to and from the public network without NAT, through its IPv6 firewall.
GUEST_IP6_CIDR, ROUTER_GUEST_IP6, IP6_PREFIX = "2001:db8:1:1::/64", "2001:db8:1:1::1", 64
PUBLIC_IP6, PUBLIC_GATEWAY_IP6 = "2001:db8:ff::30", "2001:db8:ff::2"
# A second subnet on the guest network (a shared network's extra IP range): the router takes an alias address
# in it and serves it DHCP and DNS, for a VM with an address there.
ALIAS_NETWORK, ALIAS_ROUTER_IP = "10.1.3.0/24", "10.1.3.1"
ALIAS_VM = GuestVM("vm-3", "02:00:4c:5f:00:03", "10.1.3.5")
# A redundant pair: each router's own guest address and name; ROUTER_GUEST_IP is the pair's virtual address.
REDUNDANT_ROUTERS = (("r-7-VM", "10.1.1.11"), ("r-8-VM", "10.1.1.12"))
GUEST_WEB_PORT, UNOPENED_WEB_PORT = GUEST_WEB_PORTS  # firewall rules and ACLs open the first only
FORWARDED_PORT = 2222  # on the source NAT address, to vm-1's web server; an ingress rule lets it in
UNOPENED_PORT = 2223  # forwarded to vm-2's other web server, which no rule opens: it must stay closed
BALANCED_PORT = 80  # on the source NAT address, to both guest VMs
# the statistics page on the public address (the settings' defaults), which an ingress rule opens
STATS_PORT, STATS_URI, STATS_AUTH = 8081, "/admin?stats", "admin1:AdMiN123"
BLOCKED_EGRESS_PORT = 9  # the guest network's egress rule drops it; every other port leaves
PASSWORD = "fnirq-cnffjbeq-1"  # vm-1's, sent when it "starts" after the router
VPN_PSK, VPN_USER, VPN_PASSWORD = "Wq8cVb3rT6pL", "alice", "S3cret-pw"
OUTSIDE = Side("outside", PUBLIC_NETWORK, PUBLIC_GATEWAY, PUBLIC_PREFIX, ipv6=f"{PUBLIC_GATEWAY_IP6}/{IP6_PREFIX}",
               routes=((GUEST_IP6_CIDR, PUBLIC_IP6),))
PRIVATE = Side("private", PRIVATE_NETWORK, PRIVATE_NEXT_HOP, 24, more_addresses=(ROUTED_HOST,),
               routes=((VPC_CIDR, PRIVATE_GATEWAY_IP),))
# The roles verify starts with their networks on this host, and the networks beyond their guests.
SIDES = {"router": (OUTSIDE,), "vpcrouter": (OUTSIDE, PRIVATE)}
GUESTS = {"router": (*GUEST_VMS, ALIAS_VM), "vpcrouter": GUEST_VMS}
NETWORKED_ROUTERS = tuple(SIDES)


def user_data(vm: GuestVM) -> str:
    return f"#cloud-config\nhostname: {vm.name}\n"


def _document_name(prefix: str, index: int) -> str:
    # The management server names each file <prefix>.json.<random uuid>; here the uuid comes from the
    # position, so two runs send the same names.
    return f"{prefix}.json.{uuid.uuid5(uuid.NAMESPACE_URL, f'sysvm/{prefix}/{index}')}"


def _public_ip(address: str, source_nat: bool, nic: int) -> dict[str, object]:
    return {"public_ip": address, "source_nat": source_nat, "add": True, "one_to_one_nat": not source_nat,
            "first_i_p": source_nat, "gateway": PUBLIC_GATEWAY, "netmask": GUEST_MASK,
            "vif_mac_address": nic_mac(nic), "nic_dev_id": nic, "new_nic": False, "nw_type": "Public",
            "is_private_gateway": False, "mtu": 1500}


def _ingress(rule_id: int, address: str, port: int) -> dict[str, object]:
    return {"id": rule_id, "src_ip": address, "protocol": "tcp", "src_port_range": [port, port], "revoked": False,
            "already_added": False, "source_cidr_list": ["0.0.0.0/0"], "purpose": "Firewall",
            "traffic_type": "Ingress", "default_egress_policy": False}


def _ipv6_rule(rule_id: int, traffic: str, port: int | None, sources: list[str], destinations: list[str],
               ) -> dict[str, object]:
    ports = {"protocol": "tcp", "src_port_range": [port, port]} if port else {"protocol": "all"}
    return {"id": rule_id, **ports, "revoked": False, "already_added": False, "source_cidr_list": sources,
            "dest_cidr_list": destinations, "purpose": "Ipv6Firewall", "traffic_type": traffic,
            "default_egress_policy": True, "guest_ip6_cidr": GUEST_IP6_CIDR}


def _ipv6_firewall() -> dict[str, object]:
    """The guest prefix's IPv6 firewall: egress allowed but for one port (the system rule, id 0, carries the
    default), ingress to the guests only on the first web port."""
    return {"rules": [_ipv6_rule(31, "Egress", BLOCKED_EGRESS_PORT, [GUEST_IP6_CIDR], ["::/0"]),
                      _ipv6_rule(0, "Egress", None, [], []),
                      _ipv6_rule(32, "Ingress", GUEST_WEB_PORT, ["::/0"], [GUEST_IP6_CIDR])],
            "type": "ipv6firewallrules"}


def _guest_subnets() -> list[tuple[str, dict[str, object]]]:
    """A guest network with a second IP range: the router's alias address in it and the DHCP server's
    subnets (VirtualNetworkApplianceManagerImpl sends the two together), then the DHCP entry of a VM there
    (CloudStack's CsDhcp serves a subnet once an entry has an address in it)."""
    return [("ip_aliases", {"aliases": [{"revoke": False, "ip_address": ALIAS_ROUTER_IP, "netmask": GUEST_MASK,
                                         "count": 1}], "type": "ipaliases"}),
            ("dhcp", {"entries": [{"router_ip_address": address, "gateway": address, "netmask": GUEST_MASK,
                                   "first_ip_of_subnet": network.split("/")[0]}
                                  for address, network in ((ROUTER_GUEST_IP, GUEST_NETWORK),
                                                           (ALIAS_ROUTER_IP, ALIAS_NETWORK))],
                      "type": "dhcpconfig"}),
            ("vm_dhcp_entry", _dhcp_entry(ALIAS_VM, ALIAS_ROUTER_IP))]


def _forward(public_ip: str, public_port: int, vm: GuestVM, vm_port: int) -> dict[str, object]:
    return {"revoke": False, "protocol": "tcp", "source_ip_address": public_ip,
            "source_port_range": f"{public_port}:{public_port}", "destination_ip_address": vm.ip,
            "destination_port_range": f"{vm_port}:{vm_port}", "source_cidr_list": ""}


def _forwards() -> dict[str, object]:
    vm_1, vm_2 = GUEST_VMS
    return {"rules": [_forward(PUBLIC_IP, FORWARDED_PORT, vm_1, GUEST_WEB_PORT),
                      _forward(PUBLIC_IP, UNOPENED_PORT, vm_2, UNOPENED_WEB_PORT)], "type": "forwardrules"}


def _dhcp_entry(vm: GuestVM, gateway: str) -> dict[str, object]:
    return {"host_name": vm.name, "mac_address": vm.mac, "ipv4_address": vm.ip,
            "ipv6_duid": f"00:03:00:01:{vm.mac}", "dns_addresses": gateway, "default_gateway": gateway,
            "default_entry": True, "remove": False, "type": "dhcpentry", "delete_from_processed_cache": False}


def _vm_data(vm: GuestVM, public_ip: str) -> dict[str, object]:
    metadata = [("service-offering", "Small Instance"), ("availability-zone", "zone1"), ("local-ipv4", vm.ip),
                ("local-hostname", vm.name), ("public-ipv4", public_ip), ("public-hostname", public_ip),
                ("instance-id", f"i-2-{vm.name}-VM"), ("vm-id", str(uuid.uuid5(uuid.NAMESPACE_DNS, vm.name))),
                ("public-keys", None), ("cloud-identifier", "CloudStack-{sysvm-verify}"),
                ("hypervisor-host-name", "kvm1")]
    return {"vm_ip_address": vm.ip,
            "vm_metadata": [["userdata", "user-data", base64.b64encode(user_data(vm).encode()).decode()],
                            *(["metadata", name, value] for name, value in metadata)],
            "type": "vmdata", "delete_from_processed_cache": False}


def _balancer_configuration() -> list[str]:
    """haproxy.cfg's lines as the management server's HAProxyConfigurator writes them (an element may hold
    several lines)."""
    pool = f"{PUBLIC_IP.replace('.', '_')}-{BALANCED_PORT}"
    user, password = STATS_AUTH.split(":")
    return ["global", "\tlog 127.0.0.1:3914   local0 warning", "\tmaxconn 4096", "\tmaxpipes 1024",
            "\tchroot /var/lib/haproxy", "\tuser haproxy", "\tgroup haproxy", "\tstats socket /run/haproxy/admin.sock",
            "\tdaemon", "\t ", "defaults", "\tlog     global", "\tmode    tcp", "\toption  dontlognull",
            "\tretries 3", "\toption redispatch", "\toption forwardfor", "\toption httpclose",
            "\ttimeout connect    5000", "\ttimeout client     50000", "\ttimeout server     50000",
            f"\nlisten stats_on_public\n\tbind {PUBLIC_IP}:{STATS_PORT}\n\tmode http\n\toption httpclose\n"
            f"\tstats enable\n\tstats uri     {STATS_URI}\n\tstats realm   Haproxy\\ Statistics\n"
            f"\tstats auth    {user}:{password}\n",
            "\t ", f"listen {pool}", f"\tbind {PUBLIC_IP}:{BALANCED_PORT}", "\tmode http", "\toption httpclose",
            "\tbalance roundrobin",
            *(f"\tserver {pool}_{index} {vm.ip}:{GUEST_WEB_PORT} check" for index, vm in enumerate(GUEST_VMS)),
            "\t ", "\t "]


def _monitor_service(gateways: list[str]) -> dict[str, object]:
    """The services to watch and the health checks' data; the gateways of every network the router is on
    (CloudStack's gateways_check.py fails without any)."""
    services = (("dhcp", "dnsmasq", "dnsmasq", "/var/run/dnsmasq/dnsmasq.pid"),
                ("loadbalancing", "haproxy", "haproxy", "/var/run/haproxy.pid"),
                ("ssh", "sshd", "ssh", "/var/run/sshd.pid"),
                ("webserver", "apache2", "apache2", "/var/run/apache2/apache2.pid"))
    vms = "".join(f"vmName={vm.name},macAddress={vm.mac},ip={vm.ip},dhcp=true,dns=true;" for vm in GUEST_VMS)
    return {"config": "".join(f"[{name}]:processname={process}:servicename={service}:pidfile={pidfile}:,"
                              for name, process, service, pidfile in services),
            "health_checks_enabled": True, "health_checks_basic_run_interval": 3,
            "health_checks_advanced_run_interval": 10, "excluded_health_checks": "",
            "health_checks_config": {"virtualMachines": vms,
                                     "gateways": "gatewaysIps=" + "".join(f"{gw} " for gw in gateways),
                                     "systemThresholds": "minDiskNeeded=100.0,maxCpuUsage=100.0,maxMemoryUsage=100.0;"},
            "type": "monitorservice", "delete_from_processed_cache": False}


def _guests() -> list[tuple[str, dict[str, object]]]:
    """What each guest VM brings when a router starts: its DHCP entry, then its user data and metadata."""
    return [*(("vm_dhcp_entry", _dhcp_entry(vm, ROUTER_GUEST_IP)) for vm in GUEST_VMS),
            *(("vm_metadata", _vm_data(vm, STATIC_NAT_IP if vm is GUEST_VMS[1] else PUBLIC_IP)) for vm in GUEST_VMS)]


def isolated_router_start() -> list[tuple[str, dict[str, object]]]:
    """An isolated network's router as it starts: every kind, in the management server's order."""
    kinds: list[tuple[str, dict[str, object]]] = [
        ("ip_associations", {"ip_address": [_public_ip(PUBLIC_IP, True, 2), _public_ip(STATIC_NAT_IP, False, 2)],
                             "type": "ips"}),
        # the offering's egress default is allow: the system rule (id 0, no CIDRs) and a user rule that drops
        ("firewall_rules", {"rules": [
            {"id": 21, "src_ip": "", "protocol": "tcp", "src_port_range": [BLOCKED_EGRESS_PORT, BLOCKED_EGRESS_PORT],
             "revoked": False, "already_added": False, "source_cidr_list": [GUEST_NETWORK],
             "dest_cidr_list": ["0.0.0.0/0"], "purpose": "Firewall", "traffic_type": "Egress",
             "default_egress_policy": True},
            {"id": 0, "src_ip": "", "protocol": "all", "revoked": False, "already_added": False,
             "source_cidr_list": [], "dest_cidr_list": [], "purpose": "Firewall", "traffic_type": "Egress",
             "default_egress_policy": True}], "type": "firewallrules"}),
        ("ipv6_firewall_rules", _ipv6_firewall()),
        ("staticnat_rules", {"rules": [{"revoke": False, "source_ip_address": STATIC_NAT_IP,
                                        "source_port_range": "0:0", "destination_ip_address": GUEST_VMS[1].ip}],
                             "type": "staticnatrules"}),
        ("firewall_rules", {"rules": [_ingress(12, PUBLIC_IP, FORWARDED_PORT), _ingress(13, PUBLIC_IP, BALANCED_PORT),
                                      _ingress(14, STATIC_NAT_IP, GUEST_WEB_PORT), _ingress(15, PUBLIC_IP, STATS_PORT)],
                            "type": "firewallrules"}),
        ("forwarding_rules", _forwards()),
        ("vpn_user_list", {"vpn_users": [{"user": VPN_USER, "password": VPN_PASSWORD, "add": True}],
                           "type": "vpnuserlist"}),
        ("remote_access_vpn", {"create": True, "ip_range": "10.1.2.2-10.1.2.8", "preshared_key": VPN_PSK,
                               "vpn_server_ip": PUBLIC_IP, "local_ip": "10.1.2.1", "local_cidr": GUEST_NETWORK,
                               "public_interface": "eth2", "type": "remoteaccessvpn"}),
        ("load_balancer", {"rules": [{"configuration": _balancer_configuration(), "tmp_cfg_file_path": "/etc/haproxy/",
                                      "tmp_cfg_file_name": "haproxy.cfg.new", "ssl_certs": [],
                                      "add_rules": [f"{PUBLIC_IP}:{BALANCED_PORT}:"], "remove_rules": [],
                                      "stat_rules": [f"{PUBLIC_IP}:{STATS_PORT}:0/0:,"], "router_ip": "169.254.0.44"}],
                           "type": "loadbalancer"}),
        ("monitor_service", _monitor_service([ROUTER_GUEST_IP, PUBLIC_GATEWAY])),
        *_guest_subnets(),
        *_guests(),
    ]
    return kinds


def ipv6_boot_values() -> dict[str, str]:
    """What a management server adds to an isolated router's command line when its guest network has IPv6
    (CloudStack's setup/common.sh reads them): the guest NIC's address, which radvd advertises the prefix
    of, the public NIC's, and the next hop beyond it."""
    return {"eth0ip6": ROUTER_GUEST_IP6, "eth0ip6prelen": str(IP6_PREFIX), "eth2ip6": PUBLIC_IP6,
            "eth2ip6prelen": str(IP6_PREFIX), "ip6gateway": PUBLIC_GATEWAY_IP6}


def _acl_rule(kind: str, cidr: str, allowed: bool, port: int = 0) -> dict[str, object]:
    ports = {"first_port": port, "last_port": port} if port else {}
    return {"type": kind, **ports, "cidr": cidr, "allowed": allowed}


def vpc_router_before_batch() -> list[tuple[str, dict[str, object]]]:
    """A VPC router's first documents, sent one at a time before any batch: its public address, its tier,
    its private gateway with that gateway's ACL, and the static route through it
    (VpcVirtualNetworkApplianceManagerImpl)."""
    return [
        ("ip_associations", {"ip_address": [_public_ip(PUBLIC_IP, True, 1)], "type": "ips"}),
        ("guest_network", {"add": True, "mac_address": nic_mac(2), "device": "eth2", "router_guest_ip": ROUTER_GUEST_IP,
                           "router_guest_netmask": GUEST_MASK, "router_guest_gateway": ROUTER_GUEST_IP,
                           "cidr": str(GUEST_PREFIX), "dns": UPSTREAM_DNS, "domain_name": DOMAIN,
                           "is_vr_guest_gateway": True, "network_id": 205, "mtu": 1500, "type": "guestnetwork"}),
        ("ip_associations", {"ip_address": [{
            "public_ip": PRIVATE_GATEWAY_IP, "source_nat": False, "add": True, "one_to_one_nat": False,
            "first_i_p": False, "gateway": PRIVATE_NEXT_HOP, "netmask": GUEST_MASK, "vif_mac_address": nic_mac(3),
            "nic_dev_id": 3, "new_nic": False, "nw_type": "Public", "is_private_gateway": True, "mtu": 1500}],
            "type": "ips"}),
        # the private gateway's ACL (the default_allow list): what may cross it either way
        ("network_acl", {"device": "eth3", "mac_address": nic_mac(3), "private_gateway_acl": True,
                         "nic_ip": PRIVATE_GATEWAY_IP, "nic_netmask": "24",
                         "ingress_rules": [_acl_rule("all", "0.0.0.0/0,::/0", True)],
                         "egress_rules": [_acl_rule("all", "0.0.0.0/0,::/0", True)], "type": "networkacl"}),
        ("static_routes", {"routes": [{"revoke": False, "ip_address": PRIVATE_GATEWAY_IP, "gateway": PRIVATE_NEXT_HOP,
                                       "network": ROUTED_NETWORK}], "type": "staticroutes"}),
    ]


def vpc_router_batch() -> list[tuple[str, dict[str, object]]]:
    """The tier's batch: its network ACL (ingress: the first web port; egress: all but one port), a port
    forward, a site-to-site VPN, and the guests."""
    return [
        ("network_acl", {"device": "eth2", "mac_address": nic_mac(2), "private_gateway_acl": False,
                         "nic_ip": ROUTER_GUEST_IP, "nic_netmask": str(GUEST_PREFIX),
                         "ingress_rules": [_acl_rule("tcp", "0.0.0.0/0,::/0", True, GUEST_WEB_PORT)],
                         "egress_rules": [_acl_rule("tcp", "0.0.0.0/0,::/0", False, BLOCKED_EGRESS_PORT),
                                          _acl_rule("all", "0.0.0.0/0,::/0", True)],
                         "type": "networkacl"}),
        ("forwarding_rules", _forwards()),
        ("site_2_site_vpn", {"local_public_ip": PUBLIC_IP, "local_guest_cidr": VPC_CIDR,
                             "local_public_gateway": PUBLIC_GATEWAY, "peer_gateway_ip": S2S_PEER,
                             "peer_guest_cidr_list": S2S_PEER_CIDR, "esp_policy": "aes128-sha1;modp1536",
                             "ike_policy": "aes128-sha1;modp1536", "ipsec_psk": VPN_PSK, "ike_version": "ike",
                             "ike_lifetime": 86400, "esp_lifetime": 3600, "create": True, "dpd": False,
                             "passive": False, "encap": False, "split_connections": False, "type": "site2sitevpn"}),
        *_guests(),
    ]


def _password() -> list[tuple[str, dict[str, object]]]:
    """What arrives one file at a time once the router runs: a VM that starts with a password-enabled template."""
    return [("vm_password", {"ip_address": GUEST_VMS[0].ip, "password": PASSWORD, "type": "vmpassword"})]


Documents = dict[str, dict[str, object]]


def named(kinds: list[tuple[str, dict[str, object]]], first: int = 0) -> Documents:
    """File name -> document, each with the field every model inherits from ConfigBase."""
    return {_document_name(prefix, first + index): {**document, "delete_from_processed_cache": False}
            for index, (prefix, document) in enumerate(kinds)}


def redundant_router_start() -> Documents:
    """What each router of a redundant pair gets as it starts (one batch, the same for both): no monitor
    service (the management server sends none to a redundant offering's routers)."""
    return named([
        ("ip_associations", {"ip_address": [_public_ip(PUBLIC_IP, True, 2)], "type": "ips"}),
        ("firewall_rules", {"rules": [
            {"id": 0, "src_ip": "", "protocol": "all", "revoked": False, "already_added": False,
             "source_cidr_list": [], "dest_cidr_list": [], "purpose": "Firewall", "traffic_type": "Egress",
             "default_egress_policy": True}], "type": "firewallrules"}),
        ("firewall_rules", {"rules": [_ingress(12, PUBLIC_IP, FORWARDED_PORT)], "type": "firewallrules"}),
        ("forwarding_rules", {"rules": [_forward(PUBLIC_IP, FORWARDED_PORT, GUEST_VMS[0], GUEST_WEB_PORT)],
                              "type": "forwardrules"}),
        *_guests(),
    ])


def start_steps(role: str) -> list[tuple[str, Documents]]:
    """How a networked router's configuration arrives: ("batch", documents) through vr_cfg.sh, ("single",
    documents) one update_config.py call each, in order."""
    if role == "router":
        plan = [("batch", isolated_router_start()), ("single", _password())]
    else:
        plan = [("single", vpc_router_before_batch()), ("batch", vpc_router_batch()), ("single", _password())]
    steps, sent = [], 0
    for how, kinds in plan:
        steps.append((how, named(kinds, first=sent)))
        sent += len(kinds)
    return steps


def cloud_facts(role: str) -> dict[str, object]:
    """What the guests should see, for the suite: what both router kinds do, then what one kind does."""
    facts: dict[str, object] = {
        "router_guest_ip": ROUTER_GUEST_IP, "domain": DOMAIN, "public_ip": PUBLIC_IP,
        "forwarded": {"port": FORWARDED_PORT, "vm": GUEST_VMS[0].name},
        "unopened": {"port": UNOPENED_PORT, "vm": GUEST_VMS[1].name},
        "blocked_egress_port": BLOCKED_EGRESS_PORT, "password": {"vm": GUEST_VMS[0].name, "value": PASSWORD},
        "vms": [{"name": vm.name, "mac": vm.mac, "ip": vm.ip, "user_data": user_data(vm)} for vm in GUEST_VMS]}
    if role == "router":
        facts.update({"guest_dns": ROUTER_GUEST_IP, "static_nat": {"ip": STATIC_NAT_IP, "vm": GUEST_VMS[1].name}, "balanced_port": BALANCED_PORT,
                      "stats": {"port": STATS_PORT, "uri": STATS_URI, "auth": STATS_AUTH},
                      "remote_access_vpn": {"user": VPN_USER},
                      "ipv6": {"guest_cidr": GUEST_IP6_CIDR, "outside": PUBLIC_GATEWAY_IP6},
                      "alias_subnet": {"router_ip": ALIAS_ROUTER_IP, "vm": ALIAS_VM.name, "ip": ALIAS_VM.ip}})
    else:
        # CloudStack's CsDhcp leaves the router out of a tier's DNS servers when it is the tier's gateway
        # (is_vr_guest_gateway): the guests get the VPC's upstream servers, though the router answers too.
        facts.update({"guest_dns": UPSTREAM_DNS, "static_route": {"side": PRIVATE.name, "host": ROUTED_HOST}, "site_to_site_vpn": {"peer": S2S_PEER}})
    return facts
