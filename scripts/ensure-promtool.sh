#!/usr/bin/env bash
# Installs promtool and the Prometheus server (Debian package "prometheus") when missing:
# tests/test_deploy.py validates deploy/prometheus with promtool, and
# tests/ops/test_live_prometheus.py runs the server (on 127.0.0.1, its own temporary
# storage) against a live worker; both fail without them. Quiet and non-interactive;
# a no-op when both are already on PATH.
set -euo pipefail

command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-promtool: promtool is missing and apt-get is not available;" \
         "install Prometheus' promtool by hand" >&2
    exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo -n)
fi

# The package would start a Prometheus server as a service; only the tool is wanted.
# Where no policy-rc.d exists yet, a temporary one forbids starting services.
POLICY=/usr/sbin/policy-rc.d
cleanup=()
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    cleanup=("${SUDO[@]}" rm -f "$POLICY")
fi
trap '[ ${#cleanup[@]} -eq 0 ] || "${cleanup[@]}"' EXIT

export DEBIAN_FRONTEND=noninteractive
# apt's chatter is shown only when something fails
if ! log=$("${SUDO[@]}" apt-get update -qq 2>&1 \
        && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends prometheus 2>&1); then
    printf '%s\n' "$log" >&2
    echo "ensure-promtool: could not install the Debian package 'prometheus'" >&2
    exit 1
fi

for tool in promtool prometheus; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "ensure-promtool: installed package 'prometheus' but $tool is not on PATH" >&2
        exit 1
    }
done
