#!/usr/bin/env bash
# Install headless Chromium (Debian's `chromium` package) for the dashboard's browser tests.
#
# Why the Debian package: the registries CI reaches are PyPI, npm and Debian; a browser that
# downloads its own build at install time (playwright install, puppeteer) cannot work there.
# The tests drive it over the DevTools protocol (tests/_browser.py), so nothing else is needed.
#
# Usage: ci/chromium_setup.sh   (as root; idempotent: does nothing when chromium already runs)
# Exits non-zero when Chromium cannot be installed or does not start: CI must then fail.
set -euo pipefail

check() {
    local bin
    bin="$(command -v chromium || command -v chromium-browser || true)"
    [[ -n "$bin" ]] && "$bin" --headless --no-sandbox --disable-gpu --version >/dev/null 2>&1
}

if check; then
    echo "chromium_setup: $(chromium --version 2>/dev/null || true) already works"
    exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "chromium_setup: not root, cannot apt-get install chromium" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null
check || { echo "chromium_setup: chromium installed but does not start" >&2; exit 1; }
echo "chromium_setup: $(chromium --version) installed"
