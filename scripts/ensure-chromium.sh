#!/usr/bin/env bash
# Installs a headless browser (Debian package "chromium", with Japanese fonts) when it
# is missing: tests/finance/test_report_browser.py opens the finance HTML report in it
# and fails without it. Quiet and non-interactive; a no-op when chromium is on PATH.
set -euo pipefail

have() { command -v chromium >/dev/null 2>&1; }
have && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: chromium is missing and apt-get is not available;" \
         "install Chromium by hand" >&2
    exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo -n)
fi

export DEBIAN_FRONTEND=noninteractive
# apt's chatter is shown only when something fails
if ! log=$("${SUDO[@]}" apt-get update -qq 2>&1 \
        && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
            chromium fonts-noto-cjk 2>&1); then
    printf '%s\n' "$log" >&2
    echo "ensure-chromium: could not install the Debian package chromium" >&2
    exit 1
fi

have || {
    echo "ensure-chromium: installed chromium but it is not on PATH" >&2
    exit 1
}
