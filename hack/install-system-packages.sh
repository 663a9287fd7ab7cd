#!/usr/bin/env bash
# Installs the Debian packages in hack/system-packages.txt that are missing, or only the packages
# named as arguments (`make install` names python3-venv). Needs root or sudo; apt-get from
# Debian's registry. Quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")"
if [ $# -gt 0 ]; then
  wanted=("$@")
else
  mapfile -t wanted < <(grep -v '^\s*#' system-packages.txt | awk 'NF {print $1}')
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-query >/dev/null; then
  echo "not a Debian-family system (no apt-get): install these packages yourself: ${wanted[*]}" >&2
  exit 1
fi
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "installing ${missing[*]} needs root: run as root or install sudo" >&2; exit 1; }
  SUDO="sudo"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
