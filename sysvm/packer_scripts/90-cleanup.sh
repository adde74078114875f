#!/bin/bash
# Leave nothing of the build in the image: caches, logs, host identity, and the build's own SSH key.
set -eux
apt-get clean
rm -rf /var/lib/apt/lists/* /tmp/* /var/tmp/*
rm -f /var/cache/cloud/cmdline /var/cache/cloud/cmdline.old /var/cache/cloud/cmd_line.json
find /var/log -type f -exec truncate --size=0 {} +
rm -f /etc/ssh/ssh_host_*
# ssl-cert's key pair, made when the package was installed: each VM makes its own (sysvm-snakeoil.service)
find /etc/ssl/certs -maxdepth 1 -lname ssl-cert-snakeoil.pem -delete
rm -f /etc/ssl/private/ssl-cert-snakeoil.key /etc/ssl/certs/ssl-cert-snakeoil.pem
truncate --size=0 /etc/machine-id
# Timer stamps of the build boot: with them, every VM's first boot would catch up the "missed" daily runs
# (logrotate took 20 s of the one CPU under emulation while the VM started).
rm -f /var/lib/systemd/timers/stamp-*
rm -f /var/lib/dbus/machine-id
systemctl disable sysvm-build-key.service
rm -f /etc/systemd/system/sysvm-build-key.service
rm -f /root/.ssh/authorized_keys /root/.bash_history
fstrim --all --verbose || true
sync
