# sand-boxer: exports each /run/secrets/.env/NAME (the profile's setup.env), then each
# /run/secrets/NAME (a secret) as the variable NAME. The values live only in that tmpfs;
# this file holds none. Sourced by login shells (/etc/profile) and by
# /usr/local/lib/sandboxer/session, which sshd runs for every session when the sandbox
# has secrets (ForceCommand).
if [ -d /run/secrets ]; then
    for __sbx_f in /run/secrets/.env/* /run/secrets/*; do
        [ -f "$__sbx_f" ] && [ -r "$__sbx_f" ] || continue
        __sbx_n=${__sbx_f##*/}
        case $__sbx_n in '' | [0-9]* | *[!A-Za-z0-9_]*) continue ;; esac
        __sbx_v=$(cat -- "$__sbx_f" && printf x) && export "$__sbx_n=${__sbx_v%x}"
    done
    unset __sbx_f __sbx_n __sbx_v
fi
