#!/usr/bin/env bash
# Installs promtool (Debian package "prometheus") when it is missing: tests/test_deploy.py
# validates deploy/prometheus with it and fails without it. Quiet and non-interactive;
# a no-op when promtool is already on PATH. The package would start a Prometheus server
# as a service; apt-install.sh prevents that, only the tool is wanted.
set -euo pipefail

command -v promtool >/dev/null 2>&1 && exit 0
bash "$(dirname "$0")/apt-install.sh" ensure-promtool prometheus
command -v promtool >/dev/null 2>&1 || {
    echo "ensure-promtool: installed package 'prometheus' but promtool is not on PATH" >&2
    exit 1
}
