#!/bin/sh
# Run by Packer (shell provisioner, as root) inside the booted seed: installs the
# sand-boxer guest files uploaded to /tmp/sandboxer-guest, optional extra Debian packages,
# then removes what must differ per sandbox (host keys) and the build's root login.
set -eu
g=/tmp/sandboxer-guest
install -d -m 0755 /usr/local/lib/sandboxer
install -m 0755 "$g/config.sh" /usr/local/lib/sandboxer/config
install -m 0755 "$g/session" /usr/local/lib/sandboxer/session
install -m 0755 "$g/powerbutton" /usr/local/lib/sandboxer/powerbutton
install -m 0644 "$g/loader.sh" /etc/profile.d/sandboxer-secrets.sh
install -m 0644 "$g/sandboxer-config.service" /etc/systemd/system/sandboxer-config.service
install -m 0644 "$g/sandboxer-powerbutton.service" /etc/systemd/system/sandboxer-powerbutton.service
install -m 0644 "$g/10-sandboxer.conf" /etc/ssh/sshd_config.d/10-sandboxer.conf
systemctl enable sandboxer-config.service sandboxer-powerbutton.service
systemctl disable sandboxer-seed-hostkeys.service
rm -f /etc/systemd/system/sandboxer-seed-hostkeys.service
if [ -n "${EXTRA_PACKAGES:-}" ]; then
    apt-get update -qq
    # shellcheck disable=SC2086  # a space-separated package list
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $EXTRA_PACKAGES
    apt-get clean
    rm -rf /var/lib/apt/lists/*
fi
printf '%s\n' "${IMAGE_NAME:-sandboxer-base}" >/etc/sandboxer-image
rm -f /etc/ssh/ssh_host_*
rm -rf "$g" /root/.ssh
sync
