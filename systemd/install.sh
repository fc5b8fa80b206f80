#!/usr/bin/env bash
# Installs or upgrades ringpush as a systemd service on this host: binary, config, sysctl, unit.
# Usage: sudo systemd/install.sh [path/to/ringpush]   (default: target/release/ringpush)
# Idempotent: an existing /etc/ringpush/ringpush.toml is kept; a running service is restarted
# onto the new binary.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-$here/../target/release/ringpush}"
[ -x "$bin" ] || { echo "build first: cargo build --release (no binary at $bin)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }

id ringpush >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin ringpush
install -m 0755 "$bin" /usr/local/bin/ringpush
install -d -m 0750 -g ringpush /etc/ringpush
cfg=/etc/ringpush/ringpush.toml
if [ ! -e "$cfg" ]; then
  # First install: the example config with fresh random credentials, never a known secret.
  rand() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }
  app_id="$(od -An -tu4 -N4 /dev/urandom | tr -d ' \n')"
  sed -e "s/CHANGE-ME-id/$app_id/" -e "s/CHANGE-ME-key/$(rand 10)/" -e "s/CHANGE-ME-secret/$(rand 16)/" \
    "$here/ringpush.toml" >"$cfg.new"
  chmod 0640 "$cfg.new"
  chgrp ringpush "$cfg.new"
  mv "$cfg.new" "$cfg"
  echo "wrote $cfg with random app credentials:"
  grep -E '^(id|key|secret) = ' "$cfg"
fi
/usr/local/bin/ringpush --check-config --config "$cfg" >/dev/null
install -d /usr/local/share/doc/ringpush
install -m 0644 "$here/../README.md" /usr/local/share/doc/ringpush/README.md
install -m 0644 "$here/99-ringpush.conf" /etc/sysctl.d/99-ringpush.conf
sysctl -e -q -p /etc/sysctl.d/99-ringpush.conf
install -m 0644 "$here/ringpush.service" /etc/systemd/system/ringpush.service
systemctl daemon-reload
systemctl enable ringpush.service
systemctl try-restart ringpush.service
echo "installed; start with: systemctl start ringpush && journalctl -u ringpush -f"
