"""The VMware OVA: an OVF 1.0 descriptor, a SHA256 manifest and a streamOptimized VMDK, in that order."""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from sysvm.fsutil import sha256_file

OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1"
STREAM_OPTIMIZED = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
HARDWARE_VERSION = 13  # vmx-13 needs ESXi 6.5 or later; sysvm.yaml's export.vmware_hardware_version sets it


@dataclass(frozen=True)
class VirtualSystem:
    name: str
    disk_file: str
    disk_file_size: int
    capacity_bytes: int
    cpus: int = 1
    memory_mib: int = 256
    hardware_version: int = HARDWARE_VERSION  # written vmx-NN as VMware spells it: vmx-07, vmx-13
    os_id: int = 101  # CIM id of "Other Linux (64-bit)"
    os_type: str = "otherLinux64Guest"


def _item(instance: int, resource_type: int, name: str, extra: str = "") -> str:
    return (f"      <Item>\n        <rasd:ElementName>{escape(name)}</rasd:ElementName>\n"
            f"        <rasd:InstanceID>{instance}</rasd:InstanceID>\n"
            f"        <rasd:ResourceType>{resource_type}</rasd:ResourceType>\n{extra}      </Item>\n")


def descriptor(system: VirtualSystem) -> str:
    capacity_mib = -(-system.capacity_bytes // 2**20)
    items = "".join([
        _item(1, 3, f"{system.cpus} virtual CPU(s)",
              "        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>\n"
              f"        <rasd:VirtualQuantity>{system.cpus}</rasd:VirtualQuantity>\n"),
        _item(2, 4, f"{system.memory_mib}MB of memory",
              "        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>\n"
              f"        <rasd:VirtualQuantity>{system.memory_mib}</rasd:VirtualQuantity>\n"),
        _item(3, 6, "SCSI Controller 0", "        <rasd:Address>0</rasd:Address>\n"
              "        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>\n"),
        _item(4, 5, "IDE Controller 0", "        <rasd:Address>0</rasd:Address>\n"),
        _item(5, 15, "CD-ROM 1", "        <rasd:AddressOnParent>0</rasd:AddressOnParent>\n"
              "        <rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>\n"
              "        <rasd:Parent>4</rasd:Parent>\n"),
        _item(6, 17, "Hard Disk 1", "        <rasd:AddressOnParent>0</rasd:AddressOnParent>\n"
              "        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>\n"
              "        <rasd:Parent>3</rasd:Parent>\n"),
        _item(7, 10, "Network adapter 1", "        <rasd:AddressOnParent>7</rasd:AddressOnParent>\n"
              "        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>\n"
              "        <rasd:Connection>Management</rasd:Connection>\n"
              "        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>\n"),
    ])
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="{OVF_NS}" xmlns:ovf="{OVF_NS}"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
    xmlns:vmw="http://www.vmware.com/schema/ovf"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{escape(system.disk_file)}" ovf:id="file1" ovf:size="{system.disk_file_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity_mib}" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk1"
        ovf:fileRef="file1" ovf:format="{STREAM_OPTIMIZED}"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="Management">
      <Description>The management network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{escape(system.name)}">
    <Info>A CloudStack system VM</Info>
    <Name>{escape(system.name)}</Name>
    <OperatingSystemSection ovf:id="{system.os_id}" vmw:osType="{system.os_type}">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{escape(system.name)}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-{system.hardware_version:02d}</vssd:VirtualSystemType>
      </System>
{items}      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="bios"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def manifest(entries: dict[str, str]) -> str:
    """Lines of the form SHA256(name)= digest, in the order given."""
    return "".join(f"SHA256({name})= {digest}\n" for name, digest in entries.items())


def write_ova(destination: Path, name: str, vmdk: Path, capacity_bytes: int,
              hardware_version: int = HARDWARE_VERSION) -> None:
    system = VirtualSystem(name=name, disk_file=f"{name}-disk1.vmdk", disk_file_size=vmdk.stat().st_size,
                        capacity_bytes=capacity_bytes, hardware_version=hardware_version)
    ovf_bytes = descriptor(system).encode()
    ovf_name, mf_name = f"{name}.ovf", f"{name}.mf"
    mf_bytes = manifest({ovf_name: hashlib.sha256(ovf_bytes).hexdigest(),
                         system.disk_file: sha256_file(vmdk)}).encode()
    with tarfile.open(destination, "w", format=tarfile.USTAR_FORMAT) as archive:
        for member_name, payload in ((ovf_name, ovf_bytes), (mf_name, mf_bytes)):
            info = tarfile.TarInfo(member_name)
            info.size, info.mode = len(payload), 0o644
            archive.addfile(info, io.BytesIO(payload))
        info = archive.gettarinfo(str(vmdk), arcname=system.disk_file)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        with vmdk.open("rb") as handle:
            archive.addfile(info, handle)

