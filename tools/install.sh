#!/usr/bin/env bash
# Installs picamd as a systemd service on a Raspberry Pi (Raspberry Pi OS bookworm or later).
#   sudo tools/install.sh            install or upgrade from this checkout
# picamera2 comes from apt (python3-picamera2), so the venv is made with --system-site-packages.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "run as root: sudo $0" >&2; exit 1; }
src=$(cd "$(dirname "$0")/.." && pwd)
prefix=/opt/picamd

echo "== packages from apt"
apt-get update -qq
apt-get install -y -qq python3-venv python3-picamera2 python3-numpy python3-opencv netcat-openbsd >/dev/null || \
  apt-get install -y -qq python3-venv python3-numpy netcat-openbsd >/dev/null  # not a Pi: no picamera2

echo "== user and folders"
id picamd >/dev/null 2>&1 || useradd --system --home /var/lib/picamd --shell /usr/sbin/nologin picamd
usermod -aG video picamd
getent group render >/dev/null && usermod -aG render picamd
install -d -o picamd -g picamd /var/lib/picamd /var/lib/picamd/captures /var/log/picamd
install -d -o picamd -g picamd -m 0750 /etc/picamd

echo "== code and venv in $prefix"
install -d "$prefix"
cp -r "$src/daemon" "$src/tools" "$src/pyproject.toml" "$src/README.md" "$prefix/"
[ -d "$prefix/.venv" ] || python3 -m venv --system-site-packages "$prefix/.venv"
# numpy and OpenCV from apt match picamera2's; pip only adds what apt lacks.
"$prefix/.venv/bin/pip" install --quiet -e "$prefix"

if [ ! -f /etc/picamd/config.yaml ]; then
  sed -e 's#^  base_dir: captures#  base_dir: /var/lib/picamd/captures#' \
      -e 's#^  log_dir: logs#  log_dir: /var/log/picamd#' \
      -e 's#^  regions: .*#  regions: []  \# the demo region watches the synthetic scene only#' "$src/config.yaml" > /etc/picamd/config.yaml
  chown picamd:picamd /etc/picamd/config.yaml
fi
[ -f /etc/picamd/env ] || { install -m 0600 /dev/null /etc/picamd/env; echo "# PICAMD_SMTP_PASSWORD=..." > /etc/picamd/env; }

echo "== service"
install -m 0644 "$src/systemd/picamd.service" /etc/systemd/system/picamd.service
systemctl daemon-reload
systemctl enable --now picamd
systemctl --no-pager status picamd | head -5
echo "done: echo health | nc localhost 9999 ; stream at http://$(hostname).local:8080/stream"
