#!/bin/bash
# Leave nothing of the build in the image: caches, logs, host identity, and the build's own SSH key.
set -eux
apt-get clean
rm -rf /var/lib/apt/lists/* /tmp/* /var/tmp/*
rm -f /var/cache/cloud/cmdline /var/cache/cloud/cmdline.old /var/cache/cloud/cmd_line.json
find /var/log -type f -exec truncate --size=0 {} +
rm -f /etc/ssh/ssh_host_*
truncate --size=0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
systemctl disable sysvm-build-key.service
rm -f /etc/systemd/system/sysvm-build-key.service
rm -f /root/.ssh/authorized_keys /root/.bash_history
fstrim --all --verbose || true
sync
