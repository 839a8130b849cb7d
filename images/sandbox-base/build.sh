#!/usr/bin/env bash
# Builds the sand-boxer sandbox image sandboxer/base:<VERSION> (and :latest) without any
# registry: a Debian rootfs from debootstrap (rootfs.sh) piped into `docker import`.
# The rootfs tar is cached, keyed by a hash of the recipe, so a rebuild only re-imports.
#
#   build.sh [--docker-host URL] [--output-tar FILE|-] [--mirror URL] [--force]
#   build.sh --print-changes      # the `docker import --change` values, one per line
#
# Environment: DOCKER_HOST (as for the docker CLI), SANDBOXER_IMAGE_CACHE (default
# /var/cache/sandboxer/images), SANDBOXER_DEBIAN_MIRROR (default: this host's apt mirror).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# A derived recipe (e.g. images/agent-dev) names itself and lists extra packages; it shares
# this script, the overlay (entrypoint contract) and the cache.
name="${SANDBOXER_IMAGE_NAME:-base}"
extra_packages="${SANDBOXER_IMAGE_EXTRA_PACKAGES:-}"
version_file="${SANDBOXER_IMAGE_VERSION_FILE:-}"
[[ "$name" =~ ^[a-z0-9][a-z0-9-]{0,30}$ ]] || { echo "build.sh: bad image name '$name'" >&2; exit 1; }
readonly IMAGE="sandboxer/$name"
readonly CACHE_DIR="${SANDBOXER_IMAGE_CACHE:-/var/cache/sandboxer/images}"

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

docker_host="${DOCKER_HOST:-}"
output_tar=""
mirror="${SANDBOXER_DEBIAN_MIRROR:-}"
force=0
print_changes=0
while (($#)); do
    case "$1" in
        --docker-host) (($# >= 2)) || die "--docker-host needs a URL"; docker_host="$2"; shift 2 ;;
        --docker-host=*) docker_host="${1#*=}"; shift ;;
        --output-tar) (($# >= 2)) || die "--output-tar needs a file"; output_tar="$2"; shift 2 ;;
        --output-tar=*) output_tar="${1#*=}"; shift ;;
        --mirror) (($# >= 2)) || die "--mirror needs a URL"; mirror="$2"; shift 2 ;;
        --mirror=*) mirror="${1#*=}"; shift ;;
        --force) force=1; shift ;;
        --print-changes) print_changes=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

version_file="${version_file:-$here/VERSION}"
version="$(tr -d '[:space:]' <"$version_file")"
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "$here/VERSION: '$version' is not X.Y.Z"

# Hash of everything that shapes the rootfs: file names, contents and executable bits.
recipe_hash() {
    local f
    (
        cd "$here"
        find rootfs.sh packages VERSION overlay -type f -print0 | LC_ALL=C sort -z \
            | while IFS= read -r -d '' f; do
                printf '%s %s %s\n' "$(sha256sum <"$f" | cut -d' ' -f1)" \
                    "$([[ -x "$f" ]] && echo x || echo -)" "$f"
            done
        if [[ -n "$extra_packages" ]]; then
            printf '%s %s %s\n' "$(sha256sum <"$extra_packages" | cut -d' ' -f1)" - extra
            printf '%s %s %s\n' "$(sha256sum <"$version_file" | cut -d' ' -f1)" - version
        fi
    ) | sha256sum | cut -d' ' -f1
}
recipe="$(recipe_hash)"
# The image also depends on the import instructions in this file.
build_id="$({ printf '%s\n' "$recipe"; sha256sum <"${BASH_SOURCE[0]}"; } | sha256sum | cut -d' ' -f1)"

changes=(
    'ENTRYPOINT ["/usr/local/sbin/sandboxer-entrypoint"]'
    'EXPOSE 22'
    "LABEL org.opencontainers.image.title=\"sandboxer-$name\""
    "LABEL org.opencontainers.image.version=\"$version\""
    'LABEL org.opencontainers.image.description="Debian bookworm with OpenSSH server for sand-boxer sandboxes"'
    'LABEL org.opencontainers.image.vendor="sand-boxer"'
    "LABEL io.sandboxer.image.recipe=\"$recipe\""
    "LABEL io.sandboxer.image.build=\"$build_id\""
)
if ((print_changes)); then
    printf '%s\n' "${changes[@]}"
    exit 0
fi

default_mirror() {
    local uri=""
    if command -v apt-get >/dev/null; then
        # shellcheck disable=SC2016  # $(REPO_URI) is apt's format placeholder
        uri="$(apt-get indextargets --format '$(REPO_URI)' 'Codename: bookworm' 2>/dev/null \
            | head -n 1)" || true
    fi
    printf '%s\n' "${uri:-http://deb.debian.org/debian/}"
}

# --- the rootfs tar (cached) ---------------------------------------------------------------
tar_path="$CACHE_DIR/sandbox-$name-$recipe.tar"
ensure_tar() {
    mkdir -p "$CACHE_DIR"
    local lock_fd
    exec {lock_fd}>"$CACHE_DIR/.sandbox-$name.lock"
    # Two builds of the same recipe (CI and a test fixture) share one debootstrap run.
    flock -w 900 "$lock_fd" || die "timed out waiting for $CACHE_DIR/.sandbox-$name.lock"
    if ((force)) || [[ ! -s "$tar_path" ]]; then
        [[ -n "$mirror" ]] || mirror="$(default_mirror)"
        local start=$SECONDS
        bash "$here/rootfs.sh" "$tar_path" "$mirror" ${extra_packages:+"$extra_packages"}
        log "rootfs built in $((SECONDS - start))s: $tar_path"
        # Recipes not used for 30 days go; a shared CI machine keeps several versions.
        find "$CACHE_DIR" -maxdepth 1 -name "sandbox-$name-*.tar" -mtime +30 -delete || true
    else
        log "using cached rootfs $tar_path"
        touch "$tar_path"
    fi
    exec {lock_fd}>&-
}
ensure_tar

if [[ -n "$output_tar" ]]; then
    if [[ "$output_tar" == - ]]; then
        cat "$tar_path"
    else
        cp "$tar_path" "$output_tar.partial.$$"
        mv -f "$output_tar.partial.$$" "$output_tar"
        log "wrote $output_tar"
    fi
    exit 0
fi

# --- import ------------------------------------------------------------------------------
command -v docker >/dev/null || die "docker CLI not found"
docker_cmd=(docker)
[[ -n "$docker_host" ]] && docker_cmd+=(--host "$docker_host")
"${docker_cmd[@]}" version --format '{{.Server.Version}}' >/dev/null \
    || die "docker engine at ${docker_host:-the default host} does not answer"

tag="$IMAGE:$version"
current="$("${docker_cmd[@]}" image inspect --format \
    '{{ index .Config.Labels "io.sandboxer.image.build" }}' "$tag" 2>/dev/null)" || current=""
if ((!force)) && [[ "$current" == "$build_id" ]]; then
    log "$tag is up to date (build $build_id)"
else
    start=$SECONDS
    import_args=()
    for c in "${changes[@]}"; do
        import_args+=(--change "$c")
    done
    "${docker_cmd[@]}" import "${import_args[@]}" \
        --message "sand-boxer sandbox-$name $version (recipe $recipe)" \
        "$tar_path" "$tag" >/dev/null
    log "imported $tag in $((SECONDS - start))s"
fi
"${docker_cmd[@]}" tag "$tag" "$IMAGE:latest"
printf '%s\n' "$tag"
