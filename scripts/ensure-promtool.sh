#!/usr/bin/env bash
# Installs promtool and the Prometheus server (Debian package "prometheus") when missing:
# tests/test_deploy.py validates deploy/prometheus with promtool, and
# tests/ops/test_live_prometheus.py runs the server (on 127.0.0.1, its own temporary
# storage) against a live worker; both fail without them. Quiet and non-interactive;
# a no-op when both are already on PATH. The package would start a Prometheus server as
# a service; apt-install.sh prevents that.
set -euo pipefail

command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 && exit 0
bash "$(dirname "$0")/apt-install.sh" ensure-promtool prometheus
for tool in promtool prometheus; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "ensure-promtool: installed package 'prometheus' but $tool is not on PATH" >&2
        exit 1
    }
done
