#!/usr/bin/env bash
# Install everything syncd's build and test suite need on Debian 12 (bookworm). Idempotent:
# each step checks first and does nothing when already satisfied, so scripts/test.sh runs it
# every time.
#
#   apt:  mosquitto postgresql prometheus (real servers for integration tests, started by
#         tests/servers.py on private ports) and systemd (systemd-analyze verifies our units);
#         python3 + pip, nodejs + npm (a real Vendure for its tests) when missing.
#   pip:  this repo, editable, with the `test` extra.
#
# Needs root for apt (uses sudo when not root). The distro services of mosquitto/postgresql/
# prometheus are NOT started by this script: tests run their own instances on free ports.
#
# Env: SYNCD_FORCE_PIP=1 re-runs the pip step even if nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd -P)"

export DEBIAN_FRONTEND=noninteractive
export PIP_BREAK_SYSTEM_PACKAGES=1   # Debian's python3 is "externally managed" (PEP 668)
export PIP_ROOT_USER_ACTION=ignore
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf 'install-deps: %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo env DEBIAN_FRONTEND=noninteractive "$@"
  else
    say "ERROR: need root (or sudo) to run: $*" >&2
    exit 1
  fi
}

pkg_installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

# ---------------------------------------------------------------------------- apt packages
# package -> a file it must provide (checked too, so a half-removed package is reinstalled)
declare -A NEEDS=(
  [mosquitto]=/usr/sbin/mosquitto
  [postgresql]=/usr/bin/psql
  [prometheus]=/usr/bin/prometheus
  [systemd]=/usr/bin/systemd-analyze
)
missing=()
for pkg in mosquitto postgresql prometheus systemd; do
  if pkg_installed "$pkg" && [ -x "${NEEDS[$pkg]}" ]; then
    say "apt: $pkg already installed"
  elif [ "$pkg" = systemd ] && command -v systemd-analyze >/dev/null 2>&1; then
    say "apt: systemd-analyze already available"
  else
    missing+=("$pkg")
  fi
done
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  [[ " ${missing[*]} " == *" postgresql "* ]] || missing+=(postgresql)
fi
if ! command -v python3 >/dev/null 2>&1; then
  missing+=(python3 python3-pip python3-venv)
elif ! python3 -m pip --version >/dev/null 2>&1; then
  missing+=(python3-pip)
fi
# Node.js + npm: the Vendure tests run a real Vendure server (tests/vendure, `npm ci` by the
# fixture). The image ships Node 20; Debian's nodejs is the fallback.
if ! command -v npm >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi

if [ "${#missing[@]}" -gt 0 ]; then
  say "apt: installing ${missing[*]}"
  # Keep package scripts from starting the distro services (ports 1883/5432/9090) during
  # install: a policy-rc.d that denies every action, removed again afterwards if it was ours.
  policy=/usr/sbin/policy-rc.d
  ours=0
  if [ ! -e "$policy" ]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    ours=1
  fi
  cleanup_policy() { if [ "$ours" -eq 1 ]; then as_root rm -f "$policy"; fi; }
  trap cleanup_policy EXIT
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
  cleanup_policy
  ours=0
  trap - EXIT
  # On a booted systemd host the units are still enabled for the next boot: disable the ones
  # we just installed (tests never use them). Inside containers there is no systemd: no-op.
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    for svc in mosquitto postgresql prometheus; do
      if [[ " ${missing[*]} " == *" $svc "* ]]; then
        as_root systemctl disable --now "$svc" >/dev/null 2>&1 || true
        say "systemd: disabled distro service $svc (tests start their own)"
      fi
    done
  fi
else
  say "apt: nothing to install"
fi

# ---------------------------------------------------------------------------- python
# Skip pip when this checkout is already installed (editable) with this exact pyproject.toml.
stamp_dir="$REPO/build"
stamp="$stamp_dir/.install-deps.stamp"
want="$( { sha256sum pyproject.toml; command -v python3; python3 -V; } | sha256sum | cut -d' ' -f1)"
installed_here() {
  python3 - "$REPO" <<'EOF' >/dev/null 2>&1
import os, sys
import syncd
sys.exit(0 if os.path.realpath(syncd.__file__).startswith(sys.argv[1] + os.sep) else 1)
EOF
}
if [ "${SYNCD_FORCE_PIP:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && installed_here; then
  say "pip: syncd[test] already installed (pyproject.toml unchanged)"
else
  say "pip: installing -e '.[test]'"
  python3 -m pip install --quiet -e '.[test]'
  mkdir -p "$stamp_dir"
  printf '%s\n' "$want" > "$stamp"
fi

say "done"
