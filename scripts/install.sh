#!/usr/bin/env bash
# Installs everything CadCoder needs on a fresh Debian machine: system libraries, then the package
# with its training and test extras. Used by the README's set-up command and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

# System packages. Rendering needs none beyond the Python wheels; the demo's browser test drives Debian's
# headless Chromium (Playwright must not download its own). A machine without apt, or one where the
# install fails, still gets everything else, and the browser test then skips, saying why.
APT_PACKAGES="chromium"
if command -v apt-get >/dev/null 2>&1; then
    missing=""
    for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    if [ -n "$missing" ]; then
        if ! { $SUDO apt-get update -qq && \
               DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing; }; then
            echo "install.sh: warning: could not apt-get install$missing; the browser test will skip" >&2
        fi
    fi
else
    echo "install.sh: warning: no apt-get; install Chromium yourself for the browser test (it skips otherwise)" >&2
fi

PIP="python3 -m pip"
# torch first, pinned to the build this workplace keeps on disk (any torch>=2.4 works elsewhere).
$PIP install -q "torch==2.14.1" "torchvision==0.29.1"
# The test extra includes the demo (Gradio) and Playwright's driver for the browser test.
$PIP install -q -e ".[test]"
