"""`sandboxer create | get | list | extend | stop | start | pause | resume | destroy | reap |
reconcile`"""

from __future__ import annotations

import argparse
from typing import Any

from sandboxer.states import LIFECYCLE, STATES

LIFECYCLE_HELP = {
    "stop": "stop a ready or paused sandbox: its processes end, its data stays",
    "start": "start a stopped sandbox again, its data intact",
    "pause": "freeze a ready sandbox, memory kept",
    "resume": "thaw a paused sandbox where it was",
}


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    c = sub.add_parser("create", parents=[common], help="create a sandbox from a profile")
    c.add_argument("profile")
    c.add_argument("--ttl", help="lease length, e.g. 90s, 15m, 8h, 7d")
    c.add_argument("--actor", help="who the sandbox belongs to")
    c.add_argument("--label", action="append", metavar="K=V", help="add a label (repeatable)")
    c.add_argument("--target", help="pin a target")
    c.add_argument("--name", help="a free-form name")
    c.add_argument("--from-snapshot", metavar="SNAPSHOT",
                   help="start from this ready snapshot's data, on its target")
    c.add_argument("--dry-run", action="store_true", help="validate and plan; create nothing")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    c.set_defaults(handler=cmd_create)

    g = sub.add_parser("get", parents=[common], help="show one sandbox")
    g.add_argument("id")
    g.set_defaults(handler=cmd_get)

    ls = sub.add_parser("list", parents=[common], help="list sandboxes (live ones by default)")
    # The service refuses an unknown state, with the message every transport gives.
    ls.add_argument("--state", action="append", metavar="{" + ",".join(STATES) + "}",
                    help="only this state (repeatable); default: the live states")
    ls.add_argument("--profile")
    ls.add_argument("--actor")
    ls.add_argument("--label", action="append", metavar="K=V")
    ls.add_argument("--all", action="store_true", help="include destroyed and failed")
    ls.set_defaults(handler=cmd_list)

    e = sub.add_parser("extend", parents=[common], help="renew a lease (up to ttl.max)")
    e.add_argument("id")
    e.add_argument("--ttl", required=True, help="new lease from now, e.g. 2h")
    e.set_defaults(handler=cmd_extend)

    for op in LIFECYCLE:
        life = sub.add_parser(op, parents=[common], help=LIFECYCLE_HELP[op])
        life.add_argument("id")
        life.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
        life.set_defaults(handler=cmd_lifecycle, op=op)

    d = sub.add_parser("destroy", parents=[common], help="destroy sandboxes (idempotent)")
    d.add_argument("ids", nargs="+", metavar="ID")
    d.set_defaults(handler=cmd_destroy)

    r = sub.add_parser("reap", parents=[common], help="destroy expired leases now")
    r.set_defaults(handler=cmd_reap)
    rc = sub.add_parser("reconcile", parents=[common],
                        help="destroy resources that no live sandbox claims")
    rc.set_defaults(handler=cmd_reconcile)


# Commands print sandboxer.sandbox/v1 documents (plain dicts): the read path never needs
# pydantic, which keeps `get` and `list` fast.
Doc = dict[str, Any]


def _doc(status: Any) -> Doc:
    return status if isinstance(status, dict) else dict(status.document())


def _when(text: str) -> str:
    return text[:19].replace("T", " ")


def _show(status: Any, as_json: bool) -> None:
    from sandboxer.cli.output import emit_json, kv

    d = _doc(status)
    if as_json:
        emit_json(d)
        return
    r = d["reachability"]
    print(kv([
        ("id", d["id"]), ("profile", d["profile"]), ("state", d["state"]),
        ("reason", d["reason"]), ("target", d["target"]), ("actor", d["actor"]),
        ("labels", ",".join(f"{k}={v}" for k, v in d["labels"].items()) or None),
        ("created (utc)", _when(d["created_at"])), ("expires (utc)", _when(d["expires_at"])),
        ("last active (utc)", _when(d["last_active_at"]) if d.get("last_active_at") else None),
        ("from snapshot", d.get("snapshot")),
        ("ssh", r["ssh_command"] if r and d["state"] == "ready" else None),
        ("error", d["error"]),
    ]))


def _rows(items: list[Any]) -> list[list[Any]]:
    rows = []
    for s in map(_doc, items):
        r = s["reachability"]
        rows.append([s["id"], s["profile"], s["state"], s["target"], s["actor"],
                     _when(s["expires_at"]),
                     f"{r['host']}:{r['port']}" if r and s["state"] == "ready" else None])
    return rows


HEADERS = ["id", "profile", "state", "target", "actor", "expires (utc)", "ssh"]


def _list_doc(items: list[Any]) -> Doc:
    return {"schema": "sandboxer.sandboxes/v1", "items": [_doc(s) for s in items]}


def cmd_create(args: argparse.Namespace) -> int:
    from sandboxer.cli._client import WarmClient, make_client, parse_labels
    from sandboxer.cli.output import Progress, emit_json, kv, printable

    labels = parse_labels(args.label)
    if args.dry_run and args.from_snapshot:
        from sandboxer.errors import UsageError

        raise UsageError("--dry-run plans a create from a profile; it does not take "
                         "--from-snapshot", hint="leave one of them out")
    if args.dry_run:
        plan = make_client().plan(args.profile, ttl=args.ttl, actor=args.actor,
                                  labels=labels, target=args.target)
        refs = plan.get("secret_refs") or []
        if args.json:
            emit_json(plan)
        else:
            print(kv([(k, v) for k, v in plan.items() if k not in ("schema", "secret_refs")]
                     + [("secret_refs", _refs_summary(refs))]))
            for r in refs:  # a ref's check: ok, or why not; never a value
                why = "ok" if r["status"] == "ok" else f"{r['code']}: {r['reason']}"
                print(printable(f"  {r['name']} ({r['ref']}, via {r['checked_by']}): {why}"))
        # A ref that does not validate fails the dry run like it would fail the create.
        from sandboxer.errors import SecretError

        return SecretError.exit_code if any(r["status"] != "ok" for r in refs) else 0
    progress = Progress(quiet=args.quiet)
    try:
        status = WarmClient(progress).create(
            args.profile, ttl=args.ttl, actor=args.actor, labels=labels, target=args.target,
            name=args.name, from_snapshot=args.from_snapshot)
    finally:
        progress.done()
    _show(status, args.json)
    return 0


def _refs_summary(refs: list[Doc]) -> str | None:
    if not refs:
        return None
    bad = sum(r["status"] != "ok" for r in refs)
    return f"{len(refs)} ref(s), " + (f"{bad} failed" if bad else "all valid")


def cmd_get(args: argparse.Namespace) -> int:
    from sandboxer.cli._client import make_client

    _show(make_client().get_document(args.id), args.json)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from sandboxer.cli._client import make_client, parse_labels
    from sandboxer.cli.output import emit_json, table

    items = make_client().list_documents(
        states=args.state, profile=args.profile, actor=args.actor,
        labels=parse_labels(args.label) or None, all=args.all,
    )
    if args.json:
        emit_json(_list_doc(items))
    else:
        print(table(HEADERS, _rows(items)))
    return 0


def cmd_extend(args: argparse.Namespace) -> int:
    from sandboxer.cli._client import WarmClient

    _show(WarmClient().extend(args.id, args.ttl), args.json)
    return 0


def cmd_lifecycle(args: argparse.Namespace) -> int:
    """`sandboxer stop|start|pause|resume ID`: the sandbox's document after the change."""
    from sandboxer.cli._client import WarmClient
    from sandboxer.cli.output import Progress

    progress = Progress(quiet=args.quiet)
    try:
        doc = WarmClient(progress).lifecycle(args.op, args.id)
    finally:
        progress.done()
    _show(doc, args.json)
    return 0


def cmd_destroy(args: argparse.Namespace) -> int:
    from sandboxer.cli._client import WarmClient
    from sandboxer.cli.output import emit_json, printable, table
    from sandboxer.errors import SandboxerError

    client = WarmClient()
    if len(args.ids) == 1:  # one id: its error is the command's error
        done = [client.destroy_document(args.ids[0])]
        errors: list[dict[str, Any]] = []
    else:
        done, errors = [], []
        for sid in args.ids:
            try:
                done.append(client.destroy_document(sid))
            except SandboxerError as e:
                import sys

                sys.stderr.write(f"sandboxer: {printable(e.render(), keep=chr(10))}\n")
                errors.append({"id": sid, "code": e.code, "exit_code": e.exit_code,
                               "message": e.render()})
    worst = max((e["exit_code"] for e in errors), default=0)
    if args.json:
        emit_json({**_list_doc(done), "errors": errors})
    else:
        print(table(HEADERS, _rows(done)))
    return worst


def cmd_reap(args: argparse.Namespace) -> int:
    from sandboxer.cli._client import make_client
    from sandboxer.cli.output import emit_json, table

    done = make_client().reap()
    if args.json:
        emit_json(_list_doc(done))
    else:
        print(table(HEADERS, _rows(done)) if done else "nothing to reap")
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    from sandboxer.cli._client import make_client
    from sandboxer.cli.output import emit_json, table

    removed = make_client().reconcile()
    if args.json:
        emit_json({"schema": "sandboxer.reconcile/v1", "removed": removed})
    else:
        print(table(["sandbox_id", "extension", "target"],
                    [[r["sandbox_id"], r["extension"], r["target"]] for r in removed])
              if removed else "nothing orphaned")
    return 0
