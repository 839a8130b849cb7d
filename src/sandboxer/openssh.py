"""What sand-boxer knows about the OpenSSH client, in one place.

The options that pin a sandbox's host key and use only its own identity, the argv of an
``ssh`` command, copy-pasteable command lines, ssh_config stanzas, known_hosts lines and
the per-sandbox key and known_hosts paths. Standard library only (no asyncssh, no
pydantic): the CLI's ``ssh`` and ``ssh-config`` import it on their fast path.

Every value that reaches an ``-o`` option or a config line goes through ``quoted``: paths
get ``%`` doubled (OpenSSH expands tokens there) and anything with whitespace, quotes,
backslashes or ``#`` is double-quoted, so any ``SANDBOXER_HOME`` works. User and host are
checked (``sandboxer.values``) before they become a destination.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sandboxer.values import config_value, validate_host, validate_user

if TYPE_CHECKING:
    from sandboxer.config import Settings
    from sandboxer.errors import SandboxerError
    from sandboxer.models.extension import Endpoint

Option = tuple[str, str]
# Options whose value is a path (``%`` tokens are expanded there, so ``%`` is doubled).
PATH_OPTIONS = frozenset({"IdentityFile", "UserKnownHostsFile", "GlobalKnownHostsFile"})
IDENTITIES_ONLY: Option = ("IdentitiesOnly", "yes")
NO_AGENT: Option = ("IdentityAgent", "none")
STRICT: Option = ("StrictHostKeyChecking", "yes")
NO_GLOBAL_KNOWN_HOSTS: Option = ("GlobalKnownHostsFile", "/dev/null")
BATCH: Option = ("BatchMode", "yes")
QUIET: Option = ("LogLevel", "ERROR")
TUNNEL_HOST = "127.0.0.1"  # a declared tunnel's local end


# -- values, options, lines ---------------------------------------------------------------


def quoted(key: str, value: str) -> str:
    """``value`` as OpenSSH's parser must see it for option ``key``."""
    return config_value(value, path=key in PATH_OPTIONS)


def option(key: str, value: str) -> str:
    """One ``-o`` argument: ``Key=value``, the value quoted."""
    return f"{key}={quoted(key, value)}"


def option_args(options: Iterable[Option]) -> list[str]:
    """``-o Key=value`` for each option, in order."""
    args: list[str] = []
    for key, value in options:
        args += ["-o", option(key, value)]
    return args


def config_line(key: str, value: str) -> str:
    """One ssh_config line: ``Key value``, the value quoted."""
    return f"{key} {quoted(key, value)}"


def stanza(alias: str, options: Iterable[Option], comment: str) -> str:
    """A ``Host`` stanza for ssh_config, after a comment line."""
    lines = [f"# {comment}", f"Host {alias}"]
    lines += [f"    {config_line(k, v)}" for k, v in options]
    return "\n".join(lines) + "\n"


def pinned(identity_file: str, known_hosts_file: str,
           host_key_alias: str | None = None) -> list[Option]:
    """Only this identity, only this known_hosts file, the host key checked strictly
    (under ``host_key_alias`` when the name connected to is a tunnel's local end)."""
    opts = [("IdentityFile", identity_file), IDENTITIES_ONLY,
            ("UserKnownHostsFile", known_hosts_file), NO_GLOBAL_KNOWN_HOSTS, STRICT]
    if host_key_alias is not None:
        opts.append(("HostKeyAlias", host_key_alias))
    return opts


def destination(user: str, host: str) -> str:
    """``user@host``, each checked (ValueError): this is what lands in an argv."""
    return f"{validate_user(user, 'SSH user')}@{validate_host(host, 'SSH host')}"


# -- an ssh command -----------------------------------------------------------------------


def client(error: type[SandboxerError]) -> str:
    """The path of the system ``ssh``; ``error`` when it is not installed."""
    ssh = shutil.which("ssh")
    if ssh is None:
        raise error("the OpenSSH client (ssh) is not installed",
                    hint="install it: apt-get install openssh-client")
    return ssh


def argv(ssh: str, args: Sequence[str], dest: str, command: str | None = None) -> list[str]:
    """``ssh ARGS -- DEST [COMMAND]``: after ``--`` nothing is an option to ssh."""
    return [ssh, *args, "--", dest, *([] if command is None else [command])]


def endpoint_args(ep: Endpoint) -> list[str]:
    """Options for a process of ours talking to an endpoint: pinned, no agent, never a
    prompt, quiet, and the port."""
    return [
        # Not -i: ssh stats -i's argument literally, then %-expands it when loading it, so
        # no spelling of a path with '%' passes both; -o IdentityFile is only expanded.
        *option_args([("IdentityFile", ep.identity_file), IDENTITIES_ONLY, NO_AGENT, STRICT,
                      ("UserKnownHostsFile", ep.known_hosts_file), NO_GLOBAL_KNOWN_HOSTS,
                      BATCH, QUIET]),
        "-p", str(ep.port),
    ]


def command_line(ep: Endpoint, *, tunnel_alias: str | None = None,
                 tunnel_port: int | None = None) -> str:
    """A copy-pasteable one-liner that pins the host key, through a tunnel's local end
    (``HostKeyAlias``) when one is given.

    The destination ends the line with no ``--`` before it: consumers append options and
    then ``-- COMMAND``, so user and host are checked here instead (ValueError).
    """
    validate_user(ep.user, "SSH user")
    validate_host(ep.host, "SSH host")
    words = [
        "ssh",
        "-i", config_value(ep.identity_file, path=True, quote=False),
        *option_args([IDENTITIES_ONLY, STRICT, ("UserKnownHostsFile", ep.known_hosts_file)]),
    ]
    if tunnel_alias is not None:
        words += [*option_args([("HostKeyAlias", tunnel_alias)]),
                  "-p", str(tunnel_port), f"{ep.user}@{TUNNEL_HOST}"]
    else:
        words += ["-p", str(ep.port), f"{ep.user}@{ep.host}"]
    return shlex.join(words)


# -- known_hosts and key files ------------------------------------------------------------


def known_hosts_name(host: str, port: int) -> str:
    """How known_hosts names ``host:port``: bare on 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def known_hosts_line(host: str, port: int, host_key: str, *aliases: str) -> str:
    """A known_hosts line pinning ``host_key`` ("type base64 [comment]") for ``host:port``
    and any aliases (a tunnel's ``HostKeyAlias``)."""
    key = " ".join(host_key.split()[:2])
    return f"{','.join([known_hosts_name(host, port), *aliases])} {key}"


def key_paths(settings: Settings, sandbox_id: str) -> dict[str, Path]:
    """Per-sandbox key files under ``$SANDBOXER_HOME/keys`` (all 0600)."""
    k = settings.keys_dir
    return {
        "identity": k / sandbox_id,
        "identity_pub": k / f"{sandbox_id}.pub",
        "host_key": k / f"{sandbox_id}.host",
        "known_hosts": k / f"{sandbox_id}.known_hosts",
    }


def known_hosts_path(settings: Settings, sandbox_id: str) -> Path:
    """The sand-boxer-managed known_hosts file of a sandbox."""
    return key_paths(settings, sandbox_id)["known_hosts"]


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, created 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def write_known_hosts(path: Path, lines: list[str]) -> None:
    """Make ``path`` (0600) hold exactly ``lines``."""
    write_private(path, ("\n".join(lines) + "\n").encode())


def ensure_known_hosts(path: Path, line: str) -> None:
    """Make ``path`` pin ``line``; other lines are kept, the file is 0600."""
    existing = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    if line in existing:
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join([*existing, line]) + "\n")
    tmp.replace(path)
