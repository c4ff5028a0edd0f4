#!/usr/bin/env bash
# apt-install.sh WHO PACKAGE...: installs Debian packages quietly and non-interactively,
# for the ensure-*.sh scripts. Packages never start services here (a temporary
# policy-rc.d forbids it where none exists); apt's chatter is shown only on failure.
set -euo pipefail

who=$1
shift
if ! command -v apt-get >/dev/null 2>&1; then
    echo "$who: apt-get is not available; install $* by hand" >&2
    exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo -n)
fi

POLICY=/usr/sbin/policy-rc.d
cleanup=()
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    cleanup=("${SUDO[@]}" rm -f "$POLICY")
fi
trap '[ ${#cleanup[@]} -eq 0 ] || "${cleanup[@]}"' EXIT

export DEBIAN_FRONTEND=noninteractive
if ! log=$("${SUDO[@]}" apt-get update -qq 2>&1 \
        && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$@" 2>&1); then
    printf '%s\n' "$log" >&2
    echo "$who: could not install the Debian package(s) $*" >&2
    exit 1
fi
