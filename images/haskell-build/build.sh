#!/usr/bin/env bash
# Builds sandboxer/haskell-build:<VERSION>: the sandbox-base image plus GHC and cabal from
# Debian packages, for profile.build-compose (snuggle-inventor on hosts without VMs).
# Same options as ../sandbox-base/build.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export SANDBOXER_IMAGE_NAME=haskell-build
export SANDBOXER_IMAGE_EXTRA_PACKAGES="$here/packages"
export SANDBOXER_IMAGE_VERSION_FILE="$here/VERSION"
exec bash "$here/../sandbox-base/build.sh" "$@"
