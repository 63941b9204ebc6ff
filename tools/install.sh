#!/usr/bin/env bash
# Installs picamd as a systemd service on a Raspberry Pi (Raspberry Pi OS bookworm or later).
#   sudo tools/install.sh [--detect]        install or upgrade from this checkout (--detect: with person detection)
# Its two steps also run alone, without root, systemd or the picamd user (the tests run them in a scratch folder):
#   tools/install.sh venv PREFIX [--detect]  copy the code to PREFIX and make PREFIX/.venv over the system Python
#   tools/install.sh config PREFIX OUT       write the config of an installed system to OUT (needs PREFIX/.venv)
# One more picamd for a remote camera (another picamd's /stream, an RTSP URL), as picamd@NAME (systemd/picamd@.service):
#   sudo tools/install.sh --instance NAME --source URL [--http-port P] [--control-port Q] [--set KEY=VALUE]... [--force]
#        [--no-systemctl] [--root DIR]   (--root: write the files under DIR only: no root, user or systemctl needed)
#
# numpy and OpenCV come from apt (python3-numpy, python3-opencv): python3-picamera2 and simplejpeg are built
# against apt's numpy, and a numpy 2 from pip breaks them. The venv sees apt's packages (--system-site-packages)
# and pip adds only what apt lacks, held by a constraints file to apt's numpy (and scipy and scikit-learn when apt
# has them) and kept from bringing any OpenCV wheel (OpenCV is the `opencv` extra, for machines without apt's).
# PICAMD_PYTHON picks another system Python (default /usr/bin/python3).
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
python=${PICAMD_PYTHON:-/usr/bin/python3}

# The pins of what the system Python has from apt, one requirement a line, for pip's --constraint.
constraints() {
  "$python" - <<'EOF'
import importlib

print("# written by tools/install.sh: pip keeps the system's builds of these (python3-picamera2 needs apt's numpy)")
for module, name in (("numpy", "numpy"), ("scipy", "scipy"), ("sklearn", "scikit-learn")):
    try:
        version = importlib.import_module(module).__version__
    except ImportError:
        continue
    print(f"{name}=={version}")
# Debian's cv2 has no metadata pip can see: a wheel would be installed beside it, with a numpy of its own choice.
for name in ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"):
    print(f"{name}<0")
EOF
}

# Where numpy and cv2 come from, for the Python given ("numpy=PATH VERSION cv2=PATH VERSION").
numpy_cv2() {
  "$1" -c 'import cv2, numpy; print(f"numpy={numpy.__file__} {numpy.__version__} cv2={cv2.__file__} {cv2.__version__}")'
}

make_venv() {
  local prefix=$1 extras=${2:-} system
  system=$(numpy_cv2 "$python" 2>/dev/null) || {
    echo "$python cannot import numpy and cv2: sudo apt install python3-numpy python3-opencv" >&2; return 1; }
  install -d "$prefix"
  rm -rf "$prefix/daemon"  # an upgrade leaves no module of the old version behind
  cp -r "$src/daemon" "$src/tools" "$src/pyproject.toml" "$src/README.md" "$src/config.yaml" "$prefix/"
  [ -x "$prefix/.venv/bin/python" ] || "$python" -m venv --system-site-packages "$prefix/.venv"
  constraints > "$prefix/constraints.txt"
  "$prefix/.venv/bin/python" -m pip install --quiet --constraint "$prefix/constraints.txt" -e "$prefix${extras:+[$extras]}"
  # The service cannot write under /opt (ProtectSystem=strict): without this, every start compiles the daemon again
  # (seconds on a Pi Zero, and about 1.3 MiB more RSS measured by bench/memory.py).
  "$prefix/.venv/bin/python" -m compileall -q "$prefix/daemon" >/dev/null
  # pip must have left apt's numpy and OpenCV alone: the venv imports the very files the system Python does.
  if [ "$(numpy_cv2 "$prefix/.venv/bin/python")" != "$system" ]; then
    echo "the venv does not use the system's numpy and OpenCV: $(numpy_cv2 "$prefix/.venv/bin/python") (system: $system)" >&2
    return 1
  fi
  echo "venv in $prefix/.venv: $system"
}

# The installed config names the camera: `auto` could fall back to the synthetic scene, which on a real
# system would show a workshop that does not exist. A Pi (python3-picamera2 installed) gets picamera2 even when
# it cannot open yet: `health` then says why. Elsewhere the first V4L2 camera that gives a frame, else /dev/video0.
write_config() {
  local prefix=$1 out=$2 source=opencv device=/dev/video0 found
  if dpkg-query -W -f='${Status}' python3-picamera2 2>/dev/null | grep -q 'install ok installed'; then
    source=picamera2
  else
    found=$("$prefix/.venv/bin/python" -m daemon cameras 2>/dev/null | "$prefix/.venv/bin/python" -c '
import json, sys
print(next((d["device"] for d in json.load(sys.stdin).get("v4l2", []) if d.get("opens")), ""))' || true)
    device=${found:-/dev/video0}
  fi
  sed -e "s#^  source: .*#  source: $source#" \
      -e "s#^  device: .*#  device: $device#" \
      -e 's#^  base_dir: captures#  base_dir: /var/lib/picamd/captures#' \
      -e 's#^  log_dir: logs#  log_dir: /var/log/picamd#' \
      -e 's#^  regions: .*#  regions: []  \# the demo region watches the synthetic scene only#' "$prefix/config.yaml" > "$out"
  echo "config $out: camera.source $source$([ "$source" = opencv ] && echo " on $device")"
}

install_all() {
  local extras=$1 prefix=/opt/picamd
  [ "$(id -u)" = 0 ] || { echo "run as root: sudo $0" >&2; exit 1; }

  echo "== packages from apt"
  apt-get update -qq
  apt-get install -y -qq python3-venv python3-numpy python3-opencv python3-yaml python3-requests netcat-openbsd >/dev/null
  apt-get install -y -qq python3-picamera2 >/dev/null 2>&1 || echo "no python3-picamera2 here (not Raspberry Pi OS?): no Pi camera source"
  # detection groups use scikit-learn: apt's, built for this numpy (PyPI has no armv7l wheel of it)
  [ -z "$extras" ] || apt-get install -y -qq python3-sklearn >/dev/null

  echo "== user and folders"
  id picamd >/dev/null 2>&1 || useradd --system --home /var/lib/picamd --shell /usr/sbin/nologin picamd
  usermod -aG video picamd
  getent group render >/dev/null && usermod -aG render picamd
  install -d -o picamd -g picamd /var/lib/picamd /var/lib/picamd/captures /var/log/picamd
  install -d -o picamd -g picamd -m 0750 /etc/picamd

  echo "== code and venv in $prefix"
  make_venv "$prefix" "$extras"
  ln -sfn "$prefix/.venv/bin/picamd" /usr/local/bin/picamd  # `picamd cameras`, `picamd ctl health` on the PATH

  if [ ! -f /etc/picamd/config.yaml ]; then
    write_config "$prefix" /etc/picamd/config.yaml
    chown picamd:picamd /etc/picamd/config.yaml
  elif grep -q '^  source: auto' /etc/picamd/config.yaml; then
    echo "note: /etc/picamd/config.yaml has camera.source auto, which falls back to the synthetic scene when no camera opens;"
    echo "      name the camera instead (picamera2, or opencv with camera.device), see: picamd cameras"
  fi
  [ -f /etc/picamd/env ] || { install -m 0600 /dev/null /etc/picamd/env; echo "# PICAMD_SMTP_PASSWORD=..." > /etc/picamd/env; }

  echo "== service"
  install -m 0644 "$src/systemd/picamd.service" /etc/systemd/system/picamd.service
  systemctl daemon-reload
  systemctl enable --now picamd
  systemctl --no-pager status picamd | head -5
  echo "done: echo health | nc localhost 9999 ; stream at http://$(hostname).local:8080/stream"
}

# /etc/picamd/NAME.yaml (tools/instance_config.py: `picamd example-config` with the instance's keys), its folders,
# the template unit, and picamd@NAME enabled and started when systemd runs here.
install_instance() {
  local name="" url="" root="" use_systemctl=1 py prefix=/opt/picamd
  local -a pass=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --instance|--source|--http-port|--control-port|--set|--root)
        [ $# -ge 2 ] || { echo "$1 needs a value" >&2; return 2; }
        case "$1" in
          --instance) name=$2 ;;
          --source) url=$2 ;;
          --root) root=${2%/} ;;
          *) pass+=("$1" "$2") ;;
        esac
        shift 2 ;;
      --force) pass+=(--force); shift ;;
      --no-systemctl) use_systemctl=0; shift ;;
      *) echo "unknown option $1; usage: $0 --instance NAME --source URL [--http-port P] [--control-port Q]" \
              "[--set KEY=VALUE]... [--force] [--no-systemctl] [--root DIR]" >&2; return 2 ;;
    esac
  done
  [ -n "$name" ] && [ -n "$url" ] || { echo "usage: $0 --instance NAME --source URL [...]" >&2; return 2; }
  if [ -z "$root" ]; then
    [ "$(id -u)" = 0 ] || { echo "run as root: sudo $0 --instance $name ... (or --root DIR to write the files under DIR)" >&2; exit 1; }
    [ -x "$prefix/.venv/bin/python" ] && id picamd >/dev/null 2>&1 || {
      echo "picamd is not installed here yet: run sudo $0 [--detect] first (if this machine has no camera of its own," \
           "then: systemctl disable --now picamd)" >&2; return 1; }
    py=$prefix/.venv/bin/python
  else
    py=$python  # PICAMD_PYTHON: a Python that can import the daemon's requirements (yaml)
    [ ! -x "$root$prefix/.venv/bin/python" ] || py=$root$prefix/.venv/bin/python
  fi

  echo "== config of picamd@$name"
  "$py" "$src/tools/instance_config.py" "$name" --source "$url" --root "${root:-/}" "${pass[@]}"
  install -d "$root/etc/systemd/system"
  install -m 0644 "$src/systemd/picamd@.service" "$root/etc/systemd/system/picamd@.service"
  if [ -z "$root" ]; then
    chown picamd:picamd "/etc/picamd/$name.yaml"
    install -d -o picamd -g picamd "/var/lib/picamd/$name" "/var/lib/picamd/$name/captures" "/var/log/picamd/$name"
  else
    install -d "$root/var/lib/picamd/$name/captures" "$root/var/log/picamd/$name"
  fi

  echo "== service picamd@$name"
  local why=""
  if [ -n "$root" ]; then why="--root $root"
  elif [ "$use_systemctl" = 0 ]; then why="--no-systemctl"
  elif [ ! -d /run/systemd/system ]; then why="systemd is not running here"
  fi
  if [ -n "$why" ]; then
    echo "not calling systemctl ($why): start it with systemctl daemon-reload && systemctl enable --now picamd@$name"
    return 0
  fi
  systemctl daemon-reload
  systemctl enable --now "picamd@$name"
  systemctl --no-pager status "picamd@$name" | head -5
  echo "done: picamd@$name; its ports are in /etc/picamd/$name.yaml (grep -A1 -E '^(http|control):' /etc/picamd/$name.yaml)"
}

# --detect (person detection: the detect extra, and scikit-learn from apt) or nothing.
extras_of() {
  case "${1:-}" in
    "") echo "" ;;
    --detect) echo detect ;;
    *) echo "unknown option $1 (use --detect)" >&2; return 2 ;;
  esac
}

case "${1:-}" in
  venv)
    [ $# -ge 2 ] && [ $# -le 3 ] && [ -n "$2" ] && [ "$2" != / ] || { echo "usage: $0 venv PREFIX [--detect]" >&2; exit 2; }
    extras=$(extras_of "${3:-}")
    make_venv "$2" "$extras" ;;
  config)
    [ $# -eq 3 ] || { echo "usage: $0 config PREFIX OUT" >&2; exit 2; }
    write_config "$2" "$3" ;;
  *)
    if printf '%s\n' "$@" | grep -qx -- --instance; then install_instance "$@"; exit; fi
    [ $# -le 1 ] || { echo "usage: sudo $0 [--detect]" >&2; exit 2; }
    extras=$(extras_of "${1:-}")
    install_all "$extras" ;;
esac
