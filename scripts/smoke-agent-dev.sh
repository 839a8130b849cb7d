#!/usr/bin/env bash
# Smoke test of profile.agent-dev (glas-harness). Dry run by default (no daemon needed);
# SANDBOXER_SMOKE_LIVE=1 SANDBOXER_SMOKE_TARGET=<target> creates a sandbox, clones a local
# git repository into it over SSH, runs a script from it, prints timings, destroys it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=smoke-lib.sh
. "$here/smoke-lib.sh"
PROFILE="${SANDBOXER_SMOKE_PROFILE:-profile.agent-dev}"

dry_run "$PROFILE"
[[ "${SANDBOXER_SMOKE_LIVE:-0}" == 1 ]] || { say "dry run done (SANDBOXER_SMOKE_LIVE=1 to create)"; exit 0; }

live_create "$PROFILE"
work="$(mktemp -d)"
trap 'say "destroy $SID"; "$SANDBOXER" destroy "$SID" >/dev/null || true; rm -rf "$work"' EXIT
git -C "$work" init -q repo
printf 'print("agent says", 6 * 7)\n' >"$work/repo/task.py"
git -C "$work/repo" -c user.email=smoke@sandboxer -c user.name=smoke add task.py
git -C "$work/repo" -c user.email=smoke@sandboxer -c user.name=smoke commit -q -m task
git -C "$work/repo" bundle create -q "$work/repo.bundle" --all

t0="$(now)"
"$SANDBOXER" ssh --direct "$SID" -- 'cat > /tmp/repo.bundle' <"$work/repo.bundle"
out="$("$SANDBOXER" ssh --direct "$SID" -- \
    'rm -rf ~/task && git clone -q /tmp/repo.bundle ~/task && python3 ~/task/task.py')"
printf '%s\n' "$out"
[[ "$out" == "agent says 42" ]] || die "unexpected output from the sandbox"
say "clone + run in $(elapsed "$t0")"
