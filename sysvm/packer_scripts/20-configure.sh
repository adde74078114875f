#!/bin/bash
# What needs the running system: alternatives and users. Role services were disabled offline by the
# disk stage; the overlay stage enables the role setup, which enables a role's own services at boot.
set -eux
update-alternatives --set iptables "/usr/sbin/iptables-${IPTABLES_BACKEND}"
update-alternatives --set ip6tables "/usr/sbin/ip6tables-${IPTABLES_BACKEND}"
id cloud >/dev/null 2>&1 || useradd --create-home --shell /bin/bash cloud
usermod --lock cloud
systemctl enable "serial-getty@${SERIAL_CONSOLE}.service"
# Folders CloudStack's scripts expect (dnsmasq's TFTP root above all: without it dnsmasq will not start),
# and the Apache modules its router metadata and secondary storage upload configuration use.
install -d -m 0755 /opt/tftpboot /etc/cloudstack /usr/share/cloud /var/cache/cloud /usr/local/cloud /var/www/html
a2enmod -q ssl rewrite auth_basic auth_digest
# CloudStack's scripts keep kernel settings in /etc/sysctl.conf (the overlay brings one: trixie's procps
# ships none), and systemd-sysctl reads it at boot through this link, which procps made before trixie.
[ -e /etc/sysctl.d/99-sysctl.conf ] || ln -s ../sysctl.conf /etc/sysctl.d/99-sysctl.conf
# The router code appends its routing tables' names to /etc/iproute2/rt_tables and fails without the file;
# from trixie iproute2 keeps its defaults in /usr/share/iproute2 only.
[ -e /etc/iproute2/rt_tables ] || install -D -m 0644 /usr/share/iproute2/rt_tables /etc/iproute2/rt_tables
# MANAGED_SERVICES (space-separated, from sysvm.yaml's services.managed): a package script that enabled
# one of them again would start it before the role setup has decided whether this role runs it.
for service in ${MANAGED_SERVICES}; do
  if systemctl is-enabled --quiet "${service}.service" 2>/dev/null; then
    echo "${service} is enabled: the role setup must be the one to start it" >&2
    exit 1
  fi
done
