#!/usr/bin/env bash
# Installs ringpush as a systemd service on this host: binary, config, sysctl, unit.
# Usage: sudo systemd/install.sh [path/to/ringpush]   (default: target/release/ringpush)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-$here/../target/release/ringpush}"
[ -x "$bin" ] || { echo "build first: cargo build --release (no binary at $bin)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }

id ringpush >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin ringpush
install -m 0755 "$bin" /usr/local/bin/ringpush
install -d -m 0750 -g ringpush /etc/ringpush
if [ ! -e /etc/ringpush/ringpush.toml ]; then
  install -m 0640 -g ringpush "$here/ringpush.toml" /etc/ringpush/ringpush.toml
  echo "edit /etc/ringpush/ringpush.toml (app id/key/secret) before starting"
fi
install -d /usr/local/share/doc/ringpush
install -m 0644 "$here/../README.md" /usr/local/share/doc/ringpush/README.md
install -m 0644 "$here/99-ringpush.conf" /etc/sysctl.d/99-ringpush.conf
sysctl --system >/dev/null
install -m 0644 "$here/ringpush.service" /etc/systemd/system/ringpush.service
systemctl daemon-reload
systemctl enable ringpush.service
echo "installed; start with: systemctl start ringpush && journalctl -u ringpush -f"
