"""`sandboxer snapshot ID | snapshots list|show|delete | fork ID` (docs/cli.md#snapshots)."""

from __future__ import annotations

import argparse
from typing import Any

Doc = dict[str, Any]
HEADERS = ["id", "name", "sandbox", "profile", "state", "size", "expires (utc)"]


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("snapshot", parents=[common],
                       help="record a snapshot of a ready, stopped or paused sandbox")
    s.add_argument("id")
    s.add_argument("--name", help="a free-form name")
    s.add_argument("--retain", metavar="D", help="keep it this long, e.g. 2d (default: the "
                   "profile's snapshot.retain; at most its snapshot.max)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    s.set_defaults(handler=cmd_snapshot)

    p = sub.add_parser("snapshots", help="list, show and delete snapshots")
    psub = p.add_subparsers(dest="snapshots_command", metavar="ACTION", required=True)
    ls = psub.add_parser("list", parents=[common],
                         help="snapshots that hold data (every state with --all)")
    ls.add_argument("--sandbox", metavar="ID", help="only this sandbox's")
    ls.add_argument("--all", action="store_true", help="include deleted and failed")
    ls.set_defaults(handler=cmd_list)
    show = psub.add_parser("show", parents=[common], help="one snapshot")
    show.add_argument("id")
    show.set_defaults(handler=cmd_show)
    d = psub.add_parser("delete", parents=[common], help="delete snapshots (idempotent)")
    d.add_argument("ids", nargs="+", metavar="ID")
    d.set_defaults(handler=cmd_delete)

    f = sub.add_parser("fork", parents=[common], help="snapshot a sandbox and create a new "
                       "one of its profile from it")
    f.add_argument("id")
    f.add_argument("--ttl", help="the new sandbox's lease, e.g. 8h")
    f.add_argument("--label", action="append", metavar="K=V",
                   help="add a label to the original's (repeatable)")
    f.add_argument("--name", help="a free-form name for the new sandbox")
    f.add_argument("--actor", help="who the new sandbox belongs to (default: the original's "
                   "owner)")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    f.set_defaults(handler=cmd_fork)


def _when(text: str) -> str:
    return text[:19].replace("T", " ")


def _size(n: int | None) -> str | None:
    if n is None:
        return None
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return None  # pragma: no cover - the loop returns


def _show(d: Doc, as_json: bool) -> None:
    from sandboxer.cli.output import emit_json, kv

    if as_json:
        emit_json(d)
        return
    print(kv([
        ("id", d["id"]), ("name", d["name"]), ("sandbox", d["sandbox_id"]),
        ("profile", d["profile"]), ("extension", d["extension"]), ("target", d["target"]),
        ("state", d["state"]), ("reason", d["reason"]), ("actor", d["actor"]),
        ("created (utc)", _when(d["created_at"])), ("expires (utc)", _when(d["expires_at"])),
        ("size", _size(d["size_bytes"])), ("content hash", d["content_hash"]),
        ("error", d["error"]),
    ]))


def _rows(items: list[Doc]) -> list[list[Any]]:
    return [[d["id"], d["name"], d["sandbox_id"], d["profile"], d["state"],
             _size(d["size_bytes"]), _when(d["expires_at"])] for d in items]


def _client() -> Any:
    from sandboxer.cli._client import make_client

    return make_client()


def cmd_snapshot(args: argparse.Namespace) -> int:
    from sandboxer.cli._client import WarmClient
    from sandboxer.cli.output import Progress

    progress = Progress(quiet=args.quiet)
    try:
        doc = WarmClient(progress).snapshot(args.id, name=args.name, retain=args.retain)
    finally:
        progress.done()
    _show(doc, args.json)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from sandboxer.cli.output import emit_json, table

    items = [dict(s.document()) for s in _client().list_snapshots(sandbox_id=args.sandbox,
                                                                  all=args.all)]
    if args.json:
        emit_json({"schema": "sandboxer.snapshots/v1", "items": items})
    else:
        print(table(HEADERS, _rows(items)))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    _show(dict(_client().get_snapshot(args.id).document()), args.json)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    import sys

    from sandboxer.cli.output import emit_json, printable, table
    from sandboxer.errors import SandboxerError

    client = _client()
    done: list[Doc] = []
    errors: list[Doc] = []
    if len(args.ids) == 1:  # one id: its error is the command's error
        done.append(dict(client.delete_snapshot(args.ids[0]).document()))
    else:
        for sid in args.ids:
            try:
                done.append(dict(client.delete_snapshot(sid).document()))
            except SandboxerError as e:
                sys.stderr.write(f"sandboxer: {printable(e.render(), keep=chr(10))}\n")
                errors.append({"id": sid, "code": e.code, "exit_code": e.exit_code,
                               "message": e.render()})
    if args.json:
        emit_json({"schema": "sandboxer.snapshots/v1", "items": done, "errors": errors})
    else:
        print(table(HEADERS, _rows(done)))
    return max((e["exit_code"] for e in errors), default=0)


def cmd_fork(args: argparse.Namespace) -> int:
    from sandboxer.cli._client import WarmClient, parse_labels
    from sandboxer.cli.output import Progress
    from sandboxer.cli.sandboxes import _show as show

    labels = parse_labels(args.label)
    progress = Progress(quiet=args.quiet)
    try:
        doc = WarmClient(progress).fork(args.id, ttl=args.ttl, labels=labels, name=args.name,
                                        actor=args.actor)
    finally:
        progress.done()
    show(doc, args.json)
    return 0
