#!/usr/bin/env bash
# Installs the system packages PeerShare builds and tests with, if any are missing.
# Debian/Ubuntu; needs root or sudo only when something is actually missing.
set -euo pipefail

packages=(libsodium-dev zlib1g-dev libminiupnpc-dev libnatpmp-dev libqrencode-dev pkg-config)
# The end-to-end tests are Python (standard library + pytest); setpriv comes with util-linux.
# python3-libtorrent is the independent BEP 5 implementation the DHT interop test runs against;
# tcpdump captures loopback traffic to prove encrypted transfers carry no plaintext.
# chromium, chromium-driver and python3-selenium drive the daemon's web UI in a real browser.
[ "${PEERSHARE_SETUP_TESTS:-0}" = 1 ] && packages+=(python3 python3-pytest python3-libtorrent util-linux tcpdump iptables coturn miniupnpd-iptables chromium chromium-driver python3-selenium valgrind binutils python3-pip)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# BLAKE3, the chunk hash, for the tests' own Python peer and manifest builder: Debian 12 packages
# no Python module of it, so it comes from PyPI (the BLAKE3 team's binding), pinned.
if [ "${PEERSHARE_SETUP_TESTS:-0}" = 1 ] && ! /usr/bin/python3 -c "import blake3" 2>/dev/null; then
  echo "setup: installing the Python module blake3 from PyPI"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo /usr/bin/python3 -m pip install --quiet --root-user-action=ignore --break-system-packages "blake3==1.0.11"
fi
command -v swift >/dev/null || { echo "setup: the Swift toolchain (6.0 or later) must be on PATH" >&2; exit 1; }
