#!/usr/bin/env bash
# Builds sandboxer/agent-dev:<VERSION>: the sandbox-base image (same entrypoint contract)
# plus what an agent of glas-harness works with — git, python3, build-essential — from
# Debian packages only. Same options as ../sandbox-base/build.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export SANDBOXER_IMAGE_NAME=agent-dev
export SANDBOXER_IMAGE_EXTRA_PACKAGES="$here/packages"
export SANDBOXER_IMAGE_VERSION_FILE="$here/VERSION"
exec bash "$here/../sandbox-base/build.sh" "$@"
