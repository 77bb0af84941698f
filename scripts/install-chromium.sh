#!/usr/bin/env bash
# Install Debian/Ubuntu's headless-capable Chromium for PDF reports and the report browser test.
# Idempotent: does nothing when /usr/bin/chromium already exists. Needs root (or sudo) for apt-get.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null | head -n1)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-chromium.sh: need root or sudo to run apt-get" >&2; exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# Debian names the package 'chromium'; Ubuntu's 'chromium-browser' is a snap shim, so prefer 'chromium'.
if ! $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core; then
  $SUDO apt-get install -y -q chromium
fi

if [ ! -x /usr/bin/chromium ]; then
  echo "install-chromium.sh: apt-get finished but /usr/bin/chromium is missing" >&2
  exit 1
fi
echo "installed: $(/usr/bin/chromium --version 2>/dev/null | head -n1)"
