"""`sandboxer reachability show ID` and `sandboxer ssh ID [-- CMD...]`"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandboxer.models.reachability import Reachability


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    r = sub.add_parser("reachability", help="how to reach a sandbox")
    rsub = r.add_subparsers(dest="reachability_command", metavar="ACTION", required=True)
    show = rsub.add_parser("show", parents=[common], help="print the reachability descriptor")
    show.add_argument("id")
    show.set_defaults(handler=cmd_show)

    s = sub.add_parser(
        "ssh", parents=[common], usage="sandboxer ssh ID [--json] [-- CMD...]",
        help="run the system ssh into a sandbox (host key pinned)",
        description="Without CMD: an interactive shell. After --: the command to run; "
        "one word is passed to the sandbox's shell as is, several are quoted as one argv.",
    )
    s.add_argument("id")
    s.set_defaults(handler=cmd_ssh, command=[])


def cmd_show(args: argparse.Namespace) -> int:
    from sandboxer.cli._client import make_client
    from sandboxer.cli.output import emit_json, kv

    reach = make_client().reachability(args.id)
    if args.json:
        emit_json(reach.model_dump(mode="json", by_alias=True))
    else:
        tunnel = reach.tunnel
        print(kv([
            ("sandbox", reach.sandbox_id), ("endpoint", f"{reach.host}:{reach.port}"),
            ("user", reach.user), ("identity_file", reach.identity_file),
            ("known_hosts", reach.known_hosts), ("ssh", reach.ssh_command),
            ("tunnel", f"{tunnel.alias} on 127.0.0.1:{tunnel.local_port}" if tunnel else None),
            ("tunnel_via", reach.tunnel_via), ("identity", reach.identity),
            ("tunnel_status", reach.tunnel_status.command if reach.tunnel_status else None),
        ]))
    return 0


def ssh_argv(reach: Reachability, known_hosts_file: str, command: list[str]) -> list[str]:
    """The OpenSSH argv for a descriptor, host key pinned to ``known_hosts_file``."""
    import shlex
    import shutil

    from sandboxer.errors import UsageError

    ssh = shutil.which("ssh")
    if ssh is None:
        raise UsageError("the OpenSSH client (ssh) is not installed",
                         hint="install it: apt-get install openssh-client")
    argv = [ssh, "-i", reach.identity_file, "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts_file}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-p", str(reach.port), f"{reach.user}@{reach.host}"]
    if command:
        argv += ["--", command[0] if len(command) == 1 else shlex.join(command)]
    return argv


def cmd_ssh(args: argparse.Namespace) -> int:
    import os
    import subprocess

    from sandboxer.cli._client import make_client
    from sandboxer.cli.output import emit_json
    from sandboxer.extensions.base import key_paths

    client = make_client()
    reach = client.reachability(args.id)
    known = key_paths(client.settings, args.id)["known_hosts"]
    if not known.exists():
        known.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(known, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(reach.known_hosts + "\n")
    command = list(args.command)
    argv = ssh_argv(reach, str(known), command)
    if args.json:
        done = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=False)
        emit_json({"schema": "sandboxer.ssh-result/v1", "sandbox_id": args.id,
                   "exit_status": done.returncode,
                   "stdout": done.stdout.decode("utf-8", "replace"),
                   "stderr": done.stderr.decode("utf-8", "replace")})
        return done.returncode
    os.execv(argv[0], argv)  # noqa: S606 - an argument array, by design
    return 1  # unreachable: execv does not return
