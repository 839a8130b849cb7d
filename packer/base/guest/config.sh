#!/bin/sh
# sand-boxer guest: read this sandbox's config drive (file system label SBXCFG) before sshd
# starts. It carries the host key sshd serves, the login user and the sandbox's
# authorized_keys; keys never travel on the kernel command line. Run by
# sandboxer-config.service.
set -eu
dev=$(blkid -L SBXCFG 2>/dev/null || true)
if [ -z "$dev" ]; then
    echo "sandboxer-config: no config drive (label SBXCFG); sshd has no host key" >&2
    exit 0
fi
mnt=/run/sandboxer-config
mkdir -p "$mnt"
mount -o ro,nosuid,nodev,noexec "$dev" "$mnt"
trap 'umount "$mnt"; rmdir "$mnt"' EXIT

user=$(cat "$mnt/user")
case $user in '' | [!a-z_]* | *[!a-z0-9_-]*) echo "sandboxer-config: bad user '$user'" >&2; exit 1 ;; esac
# The host key lives in /run (a tmpfs), never on the disk: a snapshot of the disk holds no
# private key of this sandbox, and a sandbox made from it gets its own from its drive.
install -d -m 0700 -o root -g root /run/sandboxer-ssh
install -m 0600 -o root -g root "$mnt/ssh_host_ed25519_key" /run/sandboxer-ssh/ssh_host_ed25519_key
# Forwarding: none (10-sandboxer.conf) unless the drive lists ports; then `ssh -L` (and
# -W) may reach exactly those ports of the guest's own loopback. sshd takes the first
# value of each option it reads, and 04- is read before 10-.
fwd=/etc/ssh/sshd_config.d/04-sandboxer-forward.conf
rm -f "$fwd"
if [ -s "$mnt/forward" ]; then
    opens=
    for p in $(cat "$mnt/forward"); do
        case $p in '' | 0* | *[!0-9]*) echo "sandboxer-config: bad forward port '$p'" >&2; exit 1 ;; esac
        [ "$p" -le 65535 ] || { echo "sandboxer-config: bad forward port '$p'" >&2; exit 1; }
        opens="$opens localhost:$p 127.0.0.1:$p [::1]:$p"
    done
    printf 'AllowTcpForwarding local\nPermitOpen%s\n' "$opens" >"$fwd"
fi
if [ -s "$mnt/hostname" ]; then
    hostname "$(cat "$mnt/hostname")"
    cat "$mnt/hostname" >/etc/hostname
fi
id -u "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --user-group "$user"
home=$(getent passwd "$user" | cut -d: -f6)
install -d -m 0700 -o "$user" -g "$user" "$home/.ssh"
install -m 0600 -o "$user" -g "$user" "$mnt/authorized_keys" "$home/.ssh/authorized_keys"
# Grow the root file system to the overlay's size (vm.disk); online, ext4.
resize2fs /dev/vda >/dev/null 2>&1 || true
if [ -e "$mnt/secrets" ]; then
    # Values arrive later over SSH stdin into this tmpfs; sessions export them through
    # the session wrapper (ForceCommand). This file holds no value.
    mkdir -p /run/secrets
    mount -t tmpfs -o size=4m,mode=0700,nosuid,nodev,noexec,uid="$(id -u "$user")",gid="$(id -g "$user")" \
        sandboxer-secrets /run/secrets
    printf 'ForceCommand /usr/local/lib/sandboxer/session\n' \
        >/etc/ssh/sshd_config.d/05-sandboxer-secrets.conf
else
    rm -f /etc/ssh/sshd_config.d/05-sandboxer-secrets.conf
fi
