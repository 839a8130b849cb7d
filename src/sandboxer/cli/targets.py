"""`sandboxer targets list | add NAME URL | check [NAME] | remove NAME`"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    t = sub.add_parser("targets", help="where sandboxes can be placed (docker hosts, …)")
    tsub = t.add_subparsers(dest="targets_command", metavar="ACTION", required=True)
    ls = tsub.add_parser("list", parents=[common], help="configured targets (and `local`)")
    ls.set_defaults(handler=cmd_list)
    add = tsub.add_parser("add", parents=[common],
                          help="add a docker host reached over SSH (pins its host key)")
    add.add_argument("name")
    add.add_argument("url", help="ssh://user@host[:port] for a docker host; the scheme picks "
                     "the extension")
    add.add_argument("--extension", metavar="EXT",
                     help="the extension the target is for (default: the one whose URL "
                     "scheme matches)")
    add.add_argument("--identity", metavar="FILE",
                     help="private key to log in with (default: ~/.ssh/id_ed25519 if present)")
    add.add_argument("--public-host", metavar="H",
                     help="address consumers use to reach sandboxes (default: the URL's host)")
    add.add_argument("--capacity", type=int, metavar="N", help="most live sandboxes at once")
    add.add_argument("--kind", choices=["self-hosted", "cloud"], default="self-hosted")
    add.add_argument("--allow", action="append", metavar="WHAT", default=[],
                     help="permit what the secure default refuses (repeatable; each is "
                     "described in docs/extensions/compose-ssh.md): privileged, host-network, "
                     "host-pid, host-ipc, shared-namespaces, host-cgroup, devices, "
                     "docker-socket, host-paths, extra-capabilities, ports, "
                     "external-resources, driver-opts, host-files, env-file, build, extends, "
                     "include, unlisted-keys")
    add.add_argument("--label", action="append", metavar="K=V", default=[],
                     help="a label profiles can pin or prefer by (`placement:`; repeatable)")
    add.add_argument("--host-key-fingerprint", metavar="SHA256:…",
                     help="expected host key; without it the key seen is shown and, on a "
                     "terminal, confirmed")
    add.add_argument("--yes", action="store_true",
                     help="accept the host key seen at first contact without asking")
    add.set_defaults(handler=cmd_add)
    chk = tsub.add_parser("check", parents=[common],
                          help="SSH reachable? engine? compose? free capacity?")
    chk.add_argument("name", nargs="?")
    chk.set_defaults(handler=cmd_check)
    rm = tsub.add_parser("remove", parents=[common], help="forget a target")
    rm.add_argument("name")
    rm.set_defaults(handler=cmd_remove)


def _client() -> Any:
    from sandboxer.cli._client import make_client

    return make_client()


def cmd_list(args: argparse.Namespace) -> int:
    from sandboxer.cli.output import emit_json, table

    items = _client().targets_list()
    if args.json:
        emit_json({"schema": "sandboxer.targets/v1", "items": items})
    else:
        print(table(["name", "kind", "url", "public host", "capacity", "labels", "allow"],
                    [[i["name"], i.get("kind"), i.get("url") or "(this machine's engine)",
                      i.get("public_host"), i.get("capacity"),
                      ",".join(f"{k}={v}" for k, v in sorted((i.get("labels") or {}).items())),
                      ",".join(i.get("allow") or [])]
                     for i in items]))
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    import sys

    from sandboxer.cli.output import emit_json, kv
    from sandboxer.errors import UsageError

    def confirm(fingerprint: str) -> bool:
        sys.stderr.write(f"host key of {args.url}: {fingerprint}\n")
        if args.yes:
            return True
        if not sys.stdin.isatty():
            raise UsageError("the host key must be confirmed",
                             hint="pass --yes or --host-key-fingerprint when not on a terminal")
        return input("pin this host key? [y/N] ").strip().lower() in ("y", "yes")

    from sandboxer.cli._client import parse_labels

    labels = parse_labels(args.label)
    added = _client().targets_add(
        name=args.name, url=args.url, identity=args.identity, public_host=args.public_host,
        capacity=args.capacity, kind=args.kind, allow=args.allow,
        fingerprint=args.host_key_fingerprint, extension=args.extension, confirm=confirm,
        labels=labels,
    )
    if args.json:
        emit_json({"schema": "sandboxer.target/v1", **added})
    else:
        print(kv([(k, v) for k, v in added.items() if k not in ("host_keys", "implicit")]))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from sandboxer.cli.output import emit_json, table

    results = _client().targets_check(args.name)
    if args.json:
        emit_json({"schema": "sandboxer.target-check/v1", "items": results})
    else:
        print(table(["name", "ok", "engine", "compose", "used/capacity", "error"],
                    [[r["name"], "yes" if r["ok"] else "NO", r["engine"],
                      f"{r['compose']} {r['compose_version']}" if r["compose"] else None,
                      f"{r['used']}/{r['capacity'] or '-'}", r["error"]] for r in results]))
    from sandboxer.errors import NoTarget

    return 0 if all(r["ok"] for r in results) else NoTarget.exit_code


def cmd_remove(args: argparse.Namespace) -> int:
    from sandboxer.cli.output import emit_json

    _client().targets_remove(args.name)
    if args.json:
        emit_json({"schema": "sandboxer.target-removed/v1", "name": args.name})
    else:
        print(f"removed target {args.name}")
    return 0
