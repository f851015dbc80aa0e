#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages cvpipe builds and tests against: a C++ compiler,
# FFmpeg development libraries (the extension links them), pkg-config (CMake finds them
# with it), the ffmpeg command line (re-encoding) and opencv-doc (real camera footage
# used by the tests). Runs apt through sudo when not root.
set -euo pipefail

packages=(
  g++ pkg-config
  libavformat-dev libavcodec-dev libavutil-dev libswscale-dev
  ffmpeg
  opencv-doc
)
# Debian's own Python needs its headers and venv module; a Python built elsewhere
# (pyenv, a container's) brings both.
if [ "$(command -v python3)" = /usr/bin/python3 ]; then
  packages+=(python3-dev python3-venv)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "system packages: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
