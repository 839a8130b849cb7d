#!/usr/bin/env bash
# The seed of packer/base.json: a minimal Debian bookworm disk that Packer boots and
# provisions. Built from Debian packages only (debootstrap --variant=minbase), no network
# beyond the package mirror.
#
#   seed.sh OUTDIR
#
# Writes OUTDIR/{disk.qcow2,vmlinuz,initrd.img,build_key,build_key.pub}. The rootfs tar is
# cached under SANDBOXER_IMAGE_CACHE (default /var/cache/sandboxer/images), keyed by a hash
# of this file, so a rebuild of the template only re-creates the disk (seconds).
# Environment: SANDBOXER_DEBIAN_MIRROR (default: this host's apt mirror).
set -euo pipefail

readonly SUITE=bookworm
readonly PACKAGES=openssh-server,systemd-sysv,ifupdown,isc-dhcp-client,linux-image-cloud-amd64,e2fsprogs,passwd
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${SANDBOXER_IMAGE_CACHE:-/var/cache/sandboxer/images}"

log() { printf 'seed.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

(($# == 1)) || die "usage: seed.sh OUTDIR"
out="$1"
((EUID == 0)) || die "debootstrap needs root (run as root, or keep the cached tar)"
for tool in debootstrap mkfs.ext4 qemu-img ssh-keygen; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install debootstrap e2fsprogs qemu-utils openssh-client)"
done

default_mirror() {
    local uri=""
    if command -v apt-get >/dev/null; then
        # shellcheck disable=SC2016  # $(REPO_URI) is apt's format placeholder
        uri="$(apt-get indextargets --format '$(REPO_URI)' 'Codename: bookworm' 2>/dev/null \
            | head -n 1)" || true
    fi
    printf '%s\n' "${uri:-http://deb.debian.org/debian/}"
}

key="$(sha256sum <"${BASH_SOURCE[0]}" | cut -c1-16)"
tar_path="$cache/vm-seed-$key.tar"
work="$(mktemp -d "${SANDBOXER_BUILD_TMPDIR:-/var/tmp}/sbx-seed.XXXXXX")"
cleanup() {
    local m
    for m in proc sys dev/pts dev; do
        mountpoint -q "$work/rootfs/$m" 2>/dev/null && umount -l "$work/rootfs/$m" || true
    done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
rootfs="$work/rootfs"
mkdir -p "$cache" "$rootfs"

exec {lock_fd}>"$cache/.vm-seed.lock"
flock -w 1800 "$lock_fd" || die "timed out waiting for $cache/.vm-seed.lock"
if [[ ! -s "$tar_path" ]]; then
    mirror="${SANDBOXER_DEBIAN_MIRROR:-$(default_mirror)}"
    log "debootstrap --variant=minbase $SUITE from $mirror (+ $PACKAGES)"
    start=$SECONDS
    if ! debootstrap --variant=minbase --include="$PACKAGES" --components=main \
        "$SUITE" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
        tail -n 30 "$work/debootstrap.log" >&2 || true
        die "debootstrap failed (mirror $mirror)"
    fi
    log "debootstrap took $((SECONDS - start))s"
    rm -f "$rootfs"/etc/ssh/ssh_host_*
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/doc/* "$rootfs"/debootstrap
    tar --create --file "$tar_path.partial.$$" --directory "$rootfs" --numeric-owner \
        --one-file-system --sort=name --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* .
    mv -f "$tar_path.partial.$$" "$tar_path"
    rm -rf --one-file-system "$rootfs" && mkdir "$rootfs"
else
    log "using cached rootfs $tar_path"
fi
exec {lock_fd}>&-

tar --extract --file "$tar_path" --directory "$rootfs" --numeric-owner
mkdir -p "$out"
cp "$(ls "$rootfs"/boot/vmlinuz-* | tail -n 1)" "$out/vmlinuz"
cp "$(ls "$rootfs"/boot/initrd.img-* | tail -n 1)" "$out/initrd.img"

# What Packer needs to log in once: a build key for root and host keys made at first boot.
rm -f "$out/build_key" "$out/build_key.pub"
ssh-keygen -q -t ed25519 -N '' -C packer-build -f "$out/build_key"
install -d -m 0700 "$rootfs/root/.ssh"
install -m 0600 "$out/build_key.pub" "$rootfs/root/.ssh/authorized_keys"
printf '%s\n' sandboxer-seed >"$rootfs/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 sandboxer-seed\n' >"$rootfs/etc/hosts"
printf 'auto lo\niface lo inet loopback\nauto eth0\niface eth0 inet dhcp\n' \
    >"$rootfs/etc/network/interfaces"
printf '/dev/vda / ext4 defaults,errors=remount-ro 0 1\n' >"$rootfs/etc/fstab"
cat >"$rootfs/etc/systemd/system/sandboxer-seed-hostkeys.service" <<'UNIT'
[Unit]
Description=sand-boxer seed: SSH host keys for the Packer build
Before=ssh.service
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/sandboxer-seed-hostkeys.service \
    "$rootfs/etc/systemd/system/multi-user.target.wants/sandboxer-seed-hostkeys.service"
# A 2 GiB sparse file system made straight from the directory tree: no mount, no loop device.
truncate -s 2G "$work/disk.raw"
mkfs.ext4 -q -L sbxroot -d "$rootfs" "$work/disk.raw"
qemu-img convert -O qcow2 "$work/disk.raw" "$out/disk.qcow2"
log "seed ready: $out"
