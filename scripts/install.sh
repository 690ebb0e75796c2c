#!/usr/bin/env bash
# Installs everything CadCoder needs on a fresh Debian machine: system libraries, then the package
# with its training and test extras. Used by the README's set-up command and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

# System libraries for headless rendering (none beyond what the Python wheels bring; see README).
APT_PACKAGES=""
if [ -n "$APT_PACKAGES" ] && command -v apt-get >/dev/null 2>&1; then
    missing=""
    for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    if [ -n "$missing" ]; then
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
    fi
fi

PIP="python3 -m pip"
# torch first, pinned to the build this workplace keeps on disk (any torch>=2.4 works elsewhere).
$PIP install -q "torch==2.14.1" "torchvision==0.29.1"
$PIP install -q -e ".[test]"
