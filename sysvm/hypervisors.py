"""Every hypervisor, in one table: CloudStack's name and facts, and the artifact sysvm makes for it.

Two sets of names meet here. sysvm's (kvm, vmware, xen, hyperv, ovm) name the artifacts: entries of
export.hypervisors and architectures.<arch>.hypervisors, "{hypervisor}" in artifact file names, verify's
--hypervisor; they are the short names of upstream's file names. CloudStack's (kvm, vmware, xenserver,
hyperv, lxc, ovm3) are its contracts: metadata.ini's sections and templatenames, seeding's -h, and the
database's hypervisor_type beside them. Every other module reads these names and facts from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# How the converted disk is shipped: compressed with lbzip2, zipped, or inside an OVA.
Packing = Literal["bz2", "zip", "ova"]


@dataclass(frozen=True)
class Artifact:
    """One file sysvm exports, and how export makes it from the final image."""

    name: str  # sysvm's name for it
    disk_extension: str  # of the disk inside, once unpacked
    disk_format: str  # qemu-img's name for that disk's format ("vpc" is VHD)
    convert_options: str  # qemu-img convert -o; empty: none
    packing: Packing

    @property
    def extension(self) -> str:
        """Of the artifact file, after "<name pattern>.": qcow2.bz2, vhd.zip, ova."""
        return "ova" if self.packing == "ova" else f"{self.disk_extension}.{self.packing}"


@dataclass(frozen=True)
class Hypervisor:
    """One hypervisor as CloudStack knows it, and the sysvm artifact it runs."""

    cloudstack: str  # CloudStack's name, lower case: metadata.ini section and templatename, seeding's -h
    hypervisor_type: str  # vm_template.hypervisor_type in CloudStack's database
    seeded_extension: str  # cloud-install-sys-tmplt's: the image in secondary storage is <uuid>.<this>
    artifact: Artifact
    other_linux: bool = False  # metadata.ini registers it as "Other Linux (64-bit)" rather than as Debian


# compat=0.10 so that old KVM hosts read the image, as upstream publishes it.
KVM = Artifact("kvm", "qcow2", "qcow2", "compat=0.10", "bz2")
DYNAMIC_VHD = "subformat=dynamic,force_size=on"

# In templateConfig.sh's section order, which metadata.ini keeps. LXC has no image of its own: CloudStack
# runs the KVM one.
HYPERVISORS = (
    Hypervisor("kvm", "KVM", "qcow2", KVM),
    Hypervisor("vmware", "VMware", "ova", Artifact("vmware", "vmdk", "vmdk", "subformat=streamOptimized", "ova"),
               other_linux=True),
    Hypervisor("xenserver", "XenServer", "vhd", Artifact("xen", "vhd", "vpc", DYNAMIC_VHD, "bz2"), other_linux=True),
    Hypervisor("hyperv", "Hyperv", "vhd", Artifact("hyperv", "vhd", "vpc", DYNAMIC_VHD, "zip")),
    Hypervisor("lxc", "LXC", "qcow2", KVM),
    Hypervisor("ovm3", "Ovm3", "raw", Artifact("ovm", "raw", "raw", "", "bz2")),  # OVM3 takes a raw image
)

# The table looked up by each side's name: the artifacts in the table's order, each once.
ARTIFACTS = {hypervisor.artifact.name: hypervisor.artifact for hypervisor in HYPERVISORS}
BY_CLOUDSTACK_NAME = {hypervisor.cloudstack: hypervisor for hypervisor in HYPERVISORS}
