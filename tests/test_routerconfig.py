"""The documents verify sends a router are in the shapes of CloudStack's Java models: every key is a field
of the model (or of ConfigBase) as Gson names it, the file names are VRScripts' and the types ConfigBase's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sysvm import routerconfig
from sysvm.resources import resource

CLOUDSTACK = Path(__file__).resolve().parents[2] / "shared" / "cloudstack"
VIRTUAL_NETWORK = CLOUDSTACK / "core/src/main/java/com/cloud/agent/resource/virtualnetwork"
ACL_RULES = ("AclRule", "TcpAclRule", "UdpAclRule", "IcmpAclRule", "ProtocolAclRule", "AllAclRule")
# file prefix -> (model class, {list field: the model classes its elements may be})
MODELS: dict[str, tuple[str, dict[str, tuple[str, ...] | str]]] = {
    "ip_associations": ("IpAssociation", {"ip_address": "IpAddress"}),
    "guest_network": ("GuestNetwork", {}),
    "firewall_rules": ("FirewallRules", {"rules": "FirewallRule"}),
    "ipv6_firewall_rules": ("FirewallRules", {"rules": "FirewallRule"}),
    "ip_aliases": ("IpAliases", {"aliases": "IpAddressAlias"}),
    "dhcp": ("DhcpConfig", {"entries": "DhcpConfigEntry"}),
    "staticnat_rules": ("StaticNatRules", {"rules": "StaticNatRule"}),
    "forwarding_rules": ("ForwardingRules", {"rules": "ForwardingRule"}),
    "vpn_user_list": ("VpnUserList", {"vpn_users": "VpnUser"}),
    "remote_access_vpn": ("RemoteAccessVpn", {}),
    "load_balancer": ("LoadBalancerRules", {"rules": "LoadBalancerRule"}),
    "monitor_service": ("MonitorService", {}),
    "vm_dhcp_entry": ("VmDhcpConfig", {}),
    "vm_metadata": ("VmData", {}),
    "vm_password": ("VmPassword", {}),
    "network_acl": ("NetworkACL", {"ingress_rules": ACL_RULES, "egress_rules": ACL_RULES}),
    "static_routes": ("StaticRoutes", {"routes": "StaticRoute"}),
    "site_2_site_vpn": ("Site2SiteVpn", {}),
}
VPC_ONLY = {"guest_network", "network_acl", "static_routes", "site_2_site_vpn"}
# A member field: four spaces in (the class's own), any access (FirewallRules' is package-private), not static.
FIELD = re.compile(r"^ {4}(?![^;=]*\bstatic\b)(?!return\b)(?:(?:private|protected|public)\s+)?(?:final\s+)?\w[\w<>\[\], ]*?\s+"
                   r"(\w+(?:\s*,\s*\w+)*)\s*(?:=[^;]*)?;", re.MULTILINE)


def gson_name(field: str) -> str:
    """FieldNamingPolicy.LOWER_CASE_WITH_UNDERSCORES, as the facades' Gson names fields (firstIP: first_i_p)."""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", field).lower()


def fields(*models: str) -> set[str]:
    sources = [(VIRTUAL_NETWORK / "model" / f"{model}.java").read_text() for model in models]
    return {gson_name(name.strip()) for source in sources for match in FIELD.finditer(source)
            for name in match.group(1).split(",")}


def kinds(role: str) -> list[tuple[str, dict]]:
    return [(name.split(".json.")[0], document) for _, documents in routerconfig.start_steps(role)
            for name, document in documents.items()]


@pytest.fixture(scope="module")
def sent() -> list[tuple[str, dict]]:
    if not VIRTUAL_NETWORK.is_dir():
        pytest.skip(f"no CloudStack tree at {CLOUDSTACK}")
    return kinds("router") + kinds("vpcrouter")


def test_every_key_is_a_field_of_the_java_model(sent):
    base = fields("ConfigBase")
    for prefix, document in sent:
        model, elements = MODELS[prefix]
        assert set(document) - fields(model) - base == set(), prefix
        for key, element_models in elements.items():
            models = (element_models,) if isinstance(element_models, str) else element_models
            for element in document[key]:
                assert set(element) - fields(*models) == set(), f"{prefix}: {key}"


def test_file_names_and_types_are_cloudstack_s(sent):
    scripts = (VIRTUAL_NETWORK / "VRScripts.java").read_text()
    types = set(re.findall(r'static\s+(?:final\s+)?String\s+\w+\s*=\s*"(\w+)"',
                           (VIRTUAL_NETWORK / "model/ConfigBase.java").read_text()))
    for prefix, document in sent:
        assert f'"{prefix}.json"' in scripts, prefix
        assert document["type"] in types, prefix


def test_every_kind_is_sent_to_the_router_that_takes_it():
    # an isolated router's guest network is on its command line
    assert {prefix for prefix, _ in kinds("router")} == set(MODELS) - VPC_ONLY
    assert VPC_ONLY <= {prefix for prefix, _ in kinds("vpcrouter")}


def test_gson_names_as_cloudstack_s_router_reads_them():
    assert gson_name("firstIP") == "first_i_p" and gson_name("nicDevId") == "nic_dev_id"
    assert "first_i_p" in fields("IpAddress") and "health_checks_config" in fields("MonitorService")


def test_the_router_needs_list_and_its_documentation_agree():
    needs = yaml.safe_load((resource("suites") / "router_needs.yaml").read_text())
    documented = (Path(__file__).resolve().parents[1] / "docs" / "router.md").read_text()
    names = [entry.get("name", entry.get("path")) for entries in needs.values() for entry in entries]
    assert [name for name in names if f"`{name}`" not in documented] == []
