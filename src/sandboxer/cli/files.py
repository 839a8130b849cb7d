"""`sandboxer cp [-r] [-p] SRC DST` and `sandboxer port-forward ID PORT[:LOCAL]`.

Both run the system OpenSSH client with the descriptor's pinned options (the ones
``sandboxer ssh`` uses: ``cli/reach.py``): ``cp`` runs ``scp -s`` (the sftp protocol, so no
remote shell ever sees a path), ``port-forward`` runs ``ssh -N -L`` to a port of the
sandbox's own loopback that its profile lists in ``reachability.forward`` (the descriptor's
``forward``); any other port is refused here (exit 4) and by the endpoint. Only a ready
sandbox is reachable (exit 8 otherwise). Like ``ssh``, they read the stored descriptor
only (no pydantic, no SSH library).
"""

from __future__ import annotations

import argparse
from typing import Any

from sandboxer.cli.reach import DIRECT_HELP

LOOPBACK = "127.0.0.1"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    c = sub.add_parser(
        "cp", parents=[common], usage="sandboxer cp [-r] [-p] [--direct] [--json] SRC DST",
        help="copy files into or out of a sandbox with OpenSSH's scp (host key pinned)",
        description="One of SRC and DST is ID:PATH (a sandbox id, a colon, a path in the "
        "sandbox; relative paths start at its user's login directory), the other a path on "
        "this machine (write ./sbx-… for a local name that looks like ID:PATH). scp speaks "
        "the sftp protocol: no shell in the sandbox sees the path. The sandbox must be "
        "ready.")
    c.add_argument("src", metavar="SRC")
    c.add_argument("dst", metavar="DST")
    c.add_argument("-r", "--recursive", action="store_true", help="copy directories")
    c.add_argument("-p", "--preserve", action="store_true",
                   help="keep modification times and modes")
    c.add_argument("--direct", action="store_true", help=DIRECT_HELP)
    c.set_defaults(handler=cmd_cp)

    f = sub.add_parser(
        "port-forward", parents=[common],
        usage="sandboxer port-forward ID PORT[:LOCAL] [--direct] [--json]",
        help="forward 127.0.0.1:LOCAL here to PORT on a sandbox's own loopback (ssh -L)",
        description="Runs `ssh -N -L 127.0.0.1:LOCAL:127.0.0.1:PORT` with the pinned options "
        "until interrupted. PORT must be one of the descriptor's forward ports (the "
        "profile's reachability.forward); LOCAL defaults to PORT.")
    f.add_argument("id")
    f.add_argument("ports", metavar="PORT[:LOCAL]")
    f.add_argument("--direct", action="store_true", help=DIRECT_HELP)
    f.set_defaults(handler=cmd_port_forward)


def _port(text: str, what: str) -> int:
    from sandboxer.errors import UsageError

    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageError(f"{what}: expected a port 1-65535, got {text!r}",
                         hint="write PORT or PORT:LOCAL, e.g. 8080 or 8080:18080")
    return int(text)


def parse_ports(text: str) -> tuple[int, int]:
    """``"8080"`` -> (8080, 8080); ``"8080:18080"`` -> (8080, 18080)."""
    port, colon, local = text.partition(":")
    remote = _port(port, "PORT")
    return remote, _port(local, "LOCAL") if colon else remote


def _local(path: str) -> str:
    """A local path scp cannot take for ``host:path``: a colon before any slash."""
    head = path.split("/", 1)[0]
    return f"./{path}" if ":" in head else path


def _remote(host: str, path: str) -> str:
    return f"[{host}]:{path}" if ":" in host else f"{host}:{path}"


def scp_argv(reach: dict[str, Any], known_hosts_file: str, src: str, dst: str, *,
             into: bool, recursive: bool = False, preserve: bool = False,
             direct: bool = False) -> list[str]:
    """``scp -s [-r] [-p] OPTIONS -- SRC DST``: ``into`` the sandbox (``dst`` is its path)
    or out of it (``src`` is)."""
    import shutil

    from sandboxer.cli.reach import pinned_args
    from sandboxer.errors import UsageError

    scp = shutil.which("scp")
    if scp is None:
        raise UsageError("OpenSSH's scp is not installed",
                         hint="install it: apt-get install openssh-client")
    host, args = pinned_args(reach, known_hosts_file, direct=direct)
    flags = ["-s", *(["-r"] if recursive else []), *(["-p"] if preserve else [])]
    pair = [_local(src), _remote(host, dst)] if into else [_remote(host, src), _local(dst)]
    return [scp, *flags, *args, "--", *pair]


def _checked(path: str) -> str:
    from sandboxer.errors import InvalidInput
    from sandboxer.values import validate_remote_path

    try:
        return validate_remote_path(path)
    except ValueError as e:
        raise InvalidInput(str(e)) from e


def cmd_cp(args: argparse.Namespace) -> int:
    import subprocess

    from sandboxer.cli._client import WarmClient
    from sandboxer.cli.output import emit_json
    from sandboxer.cli.reach import ready_descriptor, usable_identity
    from sandboxer.errors import UsageError
    from sandboxer.openssh import ensure_known_hosts, known_hosts_path
    from sandboxer.values import split_remote

    into, out_of = split_remote(args.dst), split_remote(args.src)
    if (into is None) == (out_of is None):
        raise UsageError(f"cp {args.src} {args.dst}: exactly one of SRC and DST is ID:PATH"
                         + (" (not two sandboxes)" if into else ""),
                         hint="e.g. `sandboxer cp notes.txt sbx-abcdefghij:notes.txt`; to "
                         "copy between sandboxes, copy out, then in")
    sid, path = into if into is not None else out_of or ("", "")  # exactly one, above
    _checked(path)
    client = WarmClient()
    reach = usable_identity(client, sid, ready_descriptor(client, sid))
    known = known_hosts_path(client.settings, sid)
    ensure_known_hosts(known, reach["known_hosts"])
    argv = scp_argv(reach, str(known), out_of[1] if out_of else args.src,
                    into[1] if into else args.dst, into=into is not None,
                    recursive=args.recursive, preserve=args.preserve, direct=args.direct)
    if args.json:
        done = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=False)
        emit_json({"schema": "sandboxer.cp-result/v1", "sandbox_id": sid,
                   "direction": "in" if into else "out", "src": args.src, "dst": args.dst,
                   "exit_status": done.returncode,
                   "stderr": done.stderr.decode("utf-8", "replace")})
        return done.returncode
    return subprocess.run(argv, check=False).returncode


def cmd_port_forward(args: argparse.Namespace) -> int:
    import os
    import sys

    from sandboxer.cli._client import WarmClient
    from sandboxer.cli.output import emit_json
    from sandboxer.cli.reach import ready_descriptor, ssh_argv, usable_identity
    from sandboxer.errors import InvalidInput
    from sandboxer.openssh import ensure_known_hosts, known_hosts_path, option_args

    port, local = parse_ports(args.ports)
    client = WarmClient()
    reach = ready_descriptor(client, args.id)
    allowed = [int(p) for p in reach.get("forward") or []]
    if port not in allowed:
        raise InvalidInput(
            f"port {port} of sandbox {args.id} is not forwarded: its profile's "
            f"reachability.forward lists {', '.join(map(str, allowed)) or 'no port'}",
            hint="add the port to the profile's reachability.forward; sandboxes created "
            "from it after that may forward it")
    reach = usable_identity(client, args.id, reach)
    known = known_hosts_path(client.settings, args.id)
    ensure_known_hosts(known, reach["known_hosts"])
    spec = f"{LOOPBACK}:{local}:{LOOPBACK}:{port}"
    argv = ssh_argv(reach, str(known), [], direct=args.direct,
                    extra=["-N", "-L", spec,
                           *option_args([("ExitOnForwardFailure", "yes")])])
    if args.json:
        emit_json({"schema": "sandboxer.port-forward/v1", "sandbox_id": args.id,
                   "port": port, "local_host": LOOPBACK, "local_port": local})
        sys.stdout.flush()
    sys.stderr.write(f"sandboxer: forwarding {LOOPBACK}:{local} to port {port} of "
                     f"{args.id}'s loopback; Ctrl-C ends it\n")
    os.execv(argv[0], argv)  # noqa: S606 - an argument array, by design
    return 1  # unreachable: execv does not return
