#!/usr/bin/env bash
# Smoke test of profile.build (snuggle-inventor). Dry run by default (no daemon needed);
# SANDBOXER_SMOKE_LIVE=1 SANDBOXER_SMOKE_TARGET=<target> creates the build sandbox, runs
# `ghc --version` and a tiny cabal build, prints timings, destroys it.
# SANDBOXER_SMOKE_PROFILE picks another profile (e.g. profile.build-compose).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=smoke-lib.sh
. "$here/smoke-lib.sh"
PROFILE="${SANDBOXER_SMOKE_PROFILE:-profile.build}"
if ! "$SANDBOXER" profiles show "$PROFILE" >/dev/null 2>&1 && [[ -z "${SANDBOXER_SMOKE_PROFILE:-}" ]]; then
    say "$PROFILE is not in this catalog; using profile.build-compose"
    PROFILE=profile.build-compose
fi

dry_run "$PROFILE"
[[ "${SANDBOXER_SMOKE_LIVE:-0}" == 1 ]] || { say "dry run done (SANDBOXER_SMOKE_LIVE=1 to create)"; exit 0; }

live_create "$PROFILE"
t0="$(now)"
"$SANDBOXER" ssh --direct "$SID" -- 'ghc --version'
# shellcheck disable=SC2016  # expanded in the sandbox, not here
"$SANDBOXER" ssh --direct "$SID" -- 'set -e; rm -rf ~/hello && mkdir -p ~/hello && cd ~/hello
cat > hello.cabal <<CABAL
cabal-version: 2.4
name: hello
version: 0.1.0
executable hello
  main-is: Main.hs
  build-depends: base
  default-language: Haskell2010
CABAL
echo "main = putStrLn \"hello from a sand-boxer build sandbox\"" > Main.hs
cabal build -v0 --offline 2>/dev/null || cabal build -v0
"$(cabal list-bin hello)"'
say "ghc + cabal build in $(elapsed "$t0")"
