"""`sandboxer reachability show ID`, `sandboxer ssh ID [-- CMD...]`, `sandboxer ssh-config [ID]`

All three read the stored ``sandboxer.reachability/v1`` document (no pydantic, no SSH
library); ``ssh`` and ``ssh-config`` on another machine than the server fetch the
sandbox's key from it (``usable_identity``). They share one set of OpenSSH options
(``sandboxer.reachability.ssh_options``, built and quoted by ``sandboxer.openssh``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandboxer.cli._client import WarmClient
    from sandboxer.client import Client

Doc = dict[str, Any]
DIRECT_HELP = "connect to the direct endpoint even when a tunnel is declared"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    r = sub.add_parser("reachability", help="how to reach a sandbox")
    rsub = r.add_subparsers(dest="reachability_command", metavar="ACTION", required=True)
    show = rsub.add_parser("show", parents=[common], help="print the reachability descriptor")
    show.add_argument("id")
    show.set_defaults(handler=cmd_show)

    s = sub.add_parser(
        "ssh", parents=[common], usage="sandboxer ssh ID [--direct] [--json] [-- CMD...]",
        help="run the system ssh into a sandbox (host key pinned)",
        description="Without CMD: an interactive shell. After --: the command to run; "
        "one word is passed to the sandbox's shell as is, several are quoted as one argv. "
        "Goes through the declared tunnel (127.0.0.1:tunnel.local_port) unless --direct.",
    )
    s.add_argument("id")
    s.add_argument("--direct", action="store_true", help=DIRECT_HELP)
    s.set_defaults(handler=cmd_ssh, command=[])

    c = sub.add_parser(
        "ssh-config", parents=[common],
        help="print OpenSSH Host stanzas for ready sandboxes (to Include; edits nothing)",
    )
    c.add_argument("id", nargs="?", help="one sandbox; default every ready sandbox")
    c.add_argument("--direct", action="store_true", help=DIRECT_HELP)
    c.set_defaults(handler=cmd_ssh_config)


def ready_descriptor(client: Client | WarmClient, sandbox_id: str) -> Doc:
    """The stored descriptor of a ready sandbox; Conflict (exit 8) otherwise."""
    from sandboxer.errors import Conflict

    doc = client.get_document(sandbox_id)
    reach: Doc | None = doc.get("reachability")
    if doc["state"] != "ready" or reach is None:
        why = f" ({doc['reason']})" if doc["state"] == "unreachable" and doc.get("reason") else ""
        from sandboxer.values import not_reachable_hint

        raise Conflict(
            f"sandbox {sandbox_id} is {doc['state']}{why}; only a ready sandbox is reachable",
            hint=not_reachable_hint(sandbox_id, doc["state"]),
        )
    return reach


def usable_identity(client: Client | WarmClient, sandbox_id: str, reach: Doc) -> Doc:
    """The descriptor with an identity file this machine can read: the descriptor's own
    when it is readable here (this machine, a shared home), else the sandbox's key fetched
    from the server (its owner or an admin) into this home's ``keys/`` (0600)."""
    import os

    from sandboxer.openssh import key_paths, write_private

    if os.access(reach["identity_file"], os.R_OK):
        return reach
    path = key_paths(client.settings, sandbox_id)["identity"]
    if not path.is_file():
        key = client.identity(sandbox_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(path, key.encode("ascii"))
    return {**reach, "identity_file": str(path)}


def cmd_show(args: argparse.Namespace) -> int:
    from sandboxer.cli._client import WarmClient
    from sandboxer.cli.output import emit_json, kv

    reach = ready_descriptor(WarmClient(), args.id)
    if args.json:
        emit_json(reach)
        return 0
    tunnel, status = reach.get("tunnel"), reach.get("tunnel_status")
    print(kv([
        ("sandbox", reach["sandbox_id"]), ("endpoint", f"{reach['host']}:{reach['port']}"),
        ("user", reach["user"]), ("identity_file", reach["identity_file"]),
        ("known_hosts", reach["known_hosts"]), ("ssh", reach["ssh_command"]),
        ("tunnel", f"{tunnel['alias']} on 127.0.0.1:{tunnel['local_port']}" if tunnel else None),
        ("tunnel_via", reach.get("tunnel_via")), ("identity", reach.get("identity")),
        ("tunnel_status", status["command"] if status else None),
        ("tunnel_doc", status["doc"] if status else None),
    ]))
    return 0


def pinned_args(reach: Doc, known_hosts_file: str, *,
                direct: bool = False) -> tuple[str, list[str]]:
    """(host, ``-o`` arguments) for a descriptor: the ssh-config options, host key
    pinned, no agent, quiet — what ``ssh``, ``cp`` (scp) and ``port-forward`` pass."""
    from sandboxer import openssh
    from sandboxer.reachability import ssh_options

    options = dict(ssh_options(reach, known_hosts_file, direct=direct))
    host = options.pop("HostName")
    return host, openssh.option_args([*options.items(), openssh.NO_AGENT, openssh.QUIET])


def ssh_argv(reach: Doc, known_hosts_file: str, command: list[str], *,
             direct: bool = False, extra: list[str] | None = None) -> list[str]:
    """The OpenSSH argv for a descriptor: the ssh-config options, host key pinned, then
    ``extra`` options (``port-forward``'s), all before ``--``."""
    import shlex

    from sandboxer import openssh
    from sandboxer.errors import UsageError

    ssh = openssh.client(UsageError)
    host, args = pinned_args(reach, known_hosts_file, direct=direct)
    remote = None if not command else command[0] if len(command) == 1 else shlex.join(command)
    return openssh.argv(ssh, [*args, *(extra or [])], host, remote)


def cmd_ssh(args: argparse.Namespace) -> int:
    import os
    import subprocess

    from sandboxer.cli._client import WarmClient
    from sandboxer.cli.output import emit_json
    from sandboxer.openssh import ensure_known_hosts, known_hosts_path

    client = WarmClient()
    reach = usable_identity(client, args.id, ready_descriptor(client, args.id))
    known = known_hosts_path(client.settings, args.id)
    ensure_known_hosts(known, reach["known_hosts"])
    argv = ssh_argv(reach, str(known), list(args.command), direct=args.direct)
    if args.json:
        done = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=False)
        emit_json({"schema": "sandboxer.ssh-result/v1", "sandbox_id": args.id,
                   "exit_status": done.returncode,
                   "stdout": done.stdout.decode("utf-8", "replace"),
                   "stderr": done.stderr.decode("utf-8", "replace")})
        return done.returncode
    tunnel = None if args.direct else reach.get("tunnel")
    if tunnel:  # the one thing sand-boxer cannot check: is the tunnel up?
        import sys

        route = reach.get("tunnel_via")
        sys.stderr.write(
            f"sandboxer: through the tunnel {tunnel['alias']} on 127.0.0.1:"
            f"{tunnel['local_port']}"
            + (f" (check it: ops-bridge tunnel status {route})" if route else "")
            + "; --direct bypasses it\n")
    os.execv(argv[0], argv)  # noqa: S606 - an argument array, by design
    return 1  # unreachable: execv does not return


def cmd_ssh_config(args: argparse.Namespace) -> int:
    from sandboxer.cli._client import make_client
    from sandboxer.cli.output import emit_json
    from sandboxer.openssh import ensure_known_hosts, known_hosts_path, stanza
    from sandboxer.reachability import host_alias, ssh_options

    client = make_client()
    if args.id:
        sandboxes = [(client.get_document(args.id), ready_descriptor(client, args.id))]
    else:
        sandboxes = [(d, d["reachability"]) for d in client.list_documents(states=["ready"])
                     if d.get("reachability")]
    hosts: list[Doc] = []
    stanzas: list[str] = []
    seen: dict[str, str] = {}
    for doc, found in sandboxes:
        reach = usable_identity(client, doc["id"], found)
        known = known_hosts_path(client.settings, doc["id"])
        ensure_known_hosts(known, reach["known_hosts"])
        alias, options = host_alias(reach), ssh_options(reach, known, direct=args.direct)
        comment = f"{doc['id']}: {doc['profile']}, expires {doc['expires_at']}"
        if alias in seen:  # OpenSSH uses the first stanza that matches
            comment += f"; alias {alias} is shadowed by {seen[alias]}'s stanza above"
        seen.setdefault(alias, doc["id"])
        stanzas.append(stanza(alias, options, comment))
        hosts.append({"sandbox_id": doc["id"], "host": alias,
                      "tunnel": bool(reach.get("tunnel")) and not args.direct,
                      "options": dict(options)})
    header = (f"# sand-boxer: {len(hosts)} ready sandbox(es); generated by `sandboxer "
              "ssh-config`, do not edit\n")
    text = "\n".join([header, *stanzas])
    if args.json:
        emit_json({"schema": "sandboxer.ssh-config/v1", "hosts": hosts, "text": text})
    else:
        print(text, end="")
    return 0
