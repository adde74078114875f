#!/bin/bash
# The management server's version query, answered as CloudStack's own script answers it:
# "<contents of /etc/cloudstack-release>&<scripts signature>", once this boot is done (4 min at most).
# CloudStack's cloud-scripts.tgz brings its own copy of this file, which then takes over.
for _ in $(seq 1 240); do
  [ -e /var/cache/cloud/boot_up_done ] && break
  logger -t cloud "get_template_version: the boot is not done yet"
  sleep 1
done
echo "$(cat /etc/cloudstack-release)&$(cat /var/cache/cloud/cloud-scripts-signature)"
