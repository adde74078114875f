#!/bin/bash
# The base disk must reach multi-user before it is provisioned. Units that fail now are reported:
# role services start here without any role configuration, and the next script disables them.
set -eu
state=unknown
for _ in $(seq 1 150); do
  state=$(systemctl is-system-running || true)
  case "$state" in running|degraded) break ;; esac
  sleep 2
done
echo "system state: $state"
systemctl is-active --quiet multi-user.target || { echo "multi-user.target is not active" >&2; exit 1; }
systemctl list-units --state=failed --no-legend --plain | sed 's/^/failed before provisioning: /'
echo "kernel: $(uname -r)"
