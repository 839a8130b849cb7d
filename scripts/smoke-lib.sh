# shellcheck shell=bash
# Shared by the consumer smoke scripts (sourced, not run).
# Dry run by default; SANDBOXER_SMOKE_LIVE=1 with SANDBOXER_SMOKE_TARGET=<target> creates for real.

SANDBOXER="${SANDBOXER:-sandboxer}"
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2fs", b - a }'; }
say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'smoke: %s\n' "$*" >&2; exit 1; }

# dry_run PROFILE: validate the profile, resolve placement, validate secret refs, print the plan.
dry_run() {
    local profile="$1" target_args=() out rc
    [[ -n "${SANDBOXER_SMOKE_TARGET:-}" ]] && target_args=(--target "$SANDBOXER_SMOKE_TARGET")
    say "profile $profile"
    "$SANDBOXER" profiles show "$profile" >/dev/null || die "$profile does not load"
    say "plan (placement and secret refs; nothing is created)"
    set +e
    out="$("$SANDBOXER" create "$profile" "${target_args[@]}" --dry-run 2>&1)"
    rc=$?
    set -e
    printf '%s\n' "$out"
    case "$rc" in
        0) say "plan ok" ;;
        6) say "no target can take $profile right now (see above); the profile itself is valid" ;;
        7) say "secret refs of $profile do not validate here (see above: OpenBao/warden)" ;;
        *) die "dry run of $profile failed (exit $rc)" ;;
    esac
}

# live_create PROFILE: create on $SANDBOXER_SMOKE_TARGET; sets SID; destroys it on exit.
live_create() {
    local profile="$1" t0 doc
    [[ -n "${SANDBOXER_SMOKE_TARGET:-}" ]] || die "SANDBOXER_SMOKE_LIVE=1 needs SANDBOXER_SMOKE_TARGET"
    t0="$(now)"
    say "create $profile on $SANDBOXER_SMOKE_TARGET"
    doc="$("$SANDBOXER" create "$profile" --target "$SANDBOXER_SMOKE_TARGET" --json)" \
        || die "create failed"
    SID="$(printf '%s' "$doc" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')"
    trap 'say "destroy $SID"; "$SANDBOXER" destroy "$SID" >/dev/null || true' EXIT
    say "ready: $SID in $(elapsed "$t0")"
    "$SANDBOXER" reachability show "$SID"
}
