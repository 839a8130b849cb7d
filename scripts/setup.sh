#!/usr/bin/env bash
# One command on a fresh Debian 12 machine: install what sand-boxer needs, then run the
# main job once — create a profile.local sandbox, run a command in it over SSH, show how
# to reach it, destroy it. Run as root or with sudo available. Safe to run again.
#
#   bash scripts/setup.sh
#
# PYTHON (default python3) picks the interpreter; an active virtualenv is honoured.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
export PIP_ROOT_USER_ACTION=ignore
# shellcheck source=scripts/deps.sh
. "$(dirname "${BASH_SOURCE[0]}")/deps.sh"
APT_PACKAGES=("${SANDBOXER_APT_PACKAGES[@]}")

say() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ "$(id -u)" -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    die "run as root or install sudo: apt-get needs root"
fi

# --- 1. Debian packages ---------------------------------------------------------------
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    APT_PACKAGES+=(python3-venv python3-pip)
fi
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if ((${#missing[@]})); then
    say "installing Debian packages: ${missing[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
    say "Debian packages already installed: ${APT_PACKAGES[*]}"
fi

# --- 2. sand-boxer itself -------------------------------------------------------------
say "installing sand-boxer (editable, with dev extras) into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
pip_args=(install --quiet --disable-pip-version-check -e '.[dev]')
stdlib="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"
if [[ -z "${VIRTUAL_ENV:-}" && -f "$stdlib/EXTERNALLY-MANAGED" ]]; then
    # Debian's own python3 is "externally managed" (PEP 668); pyenv and venvs are not.
    pip_args+=(--break-system-packages)
fi
"$PYTHON" -m pip "${pip_args[@]}"
# An editable install is compiled on first import, unless PYTHONDONTWRITEBYTECODE is set
# (some images set it): then every command would compile its modules again, ~60 ms.
"$PYTHON" -m compileall -q src >/dev/null
say "installing the docker compose v2 plugin (for ext.compose-ssh and its tests)"
install_compose_plugin "$PYTHON" "${pip_args[@]}"
# After the last pip run (pip writes its own wrapper again): the sandboxer command that
# starts Python without `site` until it needs it, ~10 ms less per command here.
say "writing the sandboxer command (python -S; see src/sandboxer/cli/launch.py)"
"$PYTHON" -m sandboxer.cli.launch
hash -r
if command -v sandboxer >/dev/null 2>&1; then
    SANDBOXER=(sandboxer)
else
    SANDBOXER=("$PYTHON" -m sandboxer)
fi

# --- 3. the machine -------------------------------------------------------------------
say "checking this machine (sandboxer doctor)"
"${SANDBOXER[@]}" doctor

# --- 4. the main job ------------------------------------------------------------------
SANDBOX_ID=""
cleanup() {
    local rc=$?
    if [[ -n "$SANDBOX_ID" ]]; then
        say "destroying $SANDBOX_ID"
        "${SANDBOXER[@]}" destroy "$SANDBOX_ID" || rc=$((rc ? rc : 1))
    fi
    if ((rc)); then
        printf '\nsetup: FAILED (exit %d)\n' "$rc" >&2
    else
        printf '\nsetup: done — sand-boxer is installed and works here\n' >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "creating a profile.local sandbox (15 minute lease)"
created="$("${SANDBOXER[@]}" create profile.local --ttl 15m --json)"
SANDBOX_ID="$(printf '%s' "$created" \
    | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["id"])')"
[[ -n "$SANDBOX_ID" ]] || die "create printed no sandbox id"
printf 'sandbox %s is ready\n' "$SANDBOX_ID" >&2

say "running a command in $SANDBOX_ID over SSH"
# shellcheck disable=SC2016  # $(hostname) expands inside the sandbox, not here
"${SANDBOXER[@]}" ssh "$SANDBOX_ID" -- 'echo hello from $(hostname); id -u' </dev/null

say "how to reach $SANDBOX_ID"
"${SANDBOXER[@]}" reachability show "$SANDBOX_ID"

say "destroying $SANDBOX_ID"
"${SANDBOXER[@]}" destroy "$SANDBOX_ID"
SANDBOX_ID=""
