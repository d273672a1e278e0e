#!/usr/bin/env bash
# Installs koe on a fresh Debian/Ubuntu machine: system packages, a virtual environment in .venv,
# torch (CPU wheel, pinned by constraints.txt) and koe with every extra.
# Usage: bash scripts/install.sh        (as root, or with sudo available for apt)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  espeak-ng sox libsndfile1 ffmpeg                     # test speech, audio tools, decoding
  libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins  # sounddevice + virtual audio devices
  open-jtalk-mecab-naist-jdic                          # Japanese frontend dictionary
  build-essential cmake                                # pyopenjtalk and jieba_fast build from source
  chromium chromium-driver mono-mcs                    # browser-demo test, Unity script syntax check
)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}"

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# The exact pin takes the CPU wheel; an open range would pull gigabytes of CUDA packages.
.venv/bin/pip install -q -c constraints.txt torch==2.13.0
.venv/bin/pip install -q -c constraints.txt -e ".[all,dev]"
echo "koe installed: .venv/bin/koe --help"
