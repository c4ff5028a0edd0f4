#!/usr/bin/env bash
# Installs a headless browser (Debian package "chromium", with Japanese fonts) when it
# is missing: tests/finance/test_report_browser.py opens the finance HTML report in it
# and fails without it. Quiet and non-interactive; a no-op when chromium is on PATH.
set -euo pipefail

command -v chromium >/dev/null 2>&1 && exit 0
bash "$(dirname "$0")/apt-install.sh" ensure-chromium chromium fonts-noto-cjk
command -v chromium >/dev/null 2>&1 || {
    echo "ensure-chromium: installed package 'chromium' but chromium is not on PATH" >&2
    exit 1
}
