"""`sandboxer pools list | show PROFILE`: the warm pools (docs/cli.md#pools)."""

from __future__ import annotations

import argparse
from typing import Any

_COLUMNS = ["profile", "extension", "size", "max age", "ready", "provisioning"]


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("pools", help="sandboxes kept provisioned ahead for a create to claim")
    psub = p.add_subparsers(dest="pools_command", metavar="ACTION", required=True)
    ls = psub.add_parser("list", parents=[common], help="every profile's pool")
    ls.set_defaults(handler=cmd_list)
    show = psub.add_parser("show", parents=[common],
                           help="one profile's pool and (admin) its sandboxes")
    show.add_argument("profile")
    show.set_defaults(handler=cmd_show)


def _client() -> Any:
    from sandboxer.cli._client import make_client

    return make_client()


def _row(doc: dict[str, Any]) -> list[Any]:
    return [doc["profile"], doc["extension"], doc["size"], doc["max_age"], doc["ready"],
            doc["provisioning"]]


def cmd_list(args: argparse.Namespace) -> int:
    from sandboxer.cli.output import emit_json, table

    items = _client().pools_list()
    if args.json:
        emit_json({"schema": "sandboxer.pools/v1", "items": items})
    else:
        print(table(_COLUMNS, [_row(d) for d in items]))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from sandboxer.cli.output import emit_json, table

    doc = _client().pools_show(args.profile)
    if args.json:
        emit_json(doc)
        return 0
    print(table(_COLUMNS, [_row(doc)]))
    if doc.get("sandboxes"):
        print()
        print(table(["id", "state", "target", "created"],
                    [[s["id"], s["state"], s["target"], s["created_at"]]
                     for s in doc["sandboxes"]]))
    return 0
