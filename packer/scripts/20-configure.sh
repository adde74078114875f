#!/bin/bash
# What needs a running system: alternatives, users, and which units start at boot.
# Role services stay disabled: the boot-time role setup enables the ones its role needs.
set -eux
update-alternatives --set iptables "/usr/sbin/iptables-${IPTABLES_BACKEND}"
update-alternatives --set ip6tables "/usr/sbin/ip6tables-${IPTABLES_BACKEND}"
id cloud >/dev/null 2>&1 || useradd --create-home --shell /bin/bash cloud
usermod --lock cloud
for service in ${ROLE_SERVICES}; do
  if systemctl list-unit-files "${service}.service" --no-legend | grep -q .; then
    systemctl disable "${service}.service" || true
  fi
done
systemctl enable cloud-early-config.service sysvm-ssh-host-keys.service ssh.service
systemctl enable netfilter-persistent.service || true
systemctl set-default multi-user.target
# Console on the serial port as well, for every hypervisor's log.
systemctl enable serial-getty@ttyS0.service
