"""`sandboxer tokens add ACTOR [--admin] | list | remove ID` — API bearer tokens.

Tokens live in the store as sha256 hashes: this machine's (``$SANDBOXER_HOME``), or the
server's with ``SANDBOXER_URL`` set (an admin token is needed there).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandboxer.client import Client


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    t = sub.add_parser("tokens", help="bearer tokens of the HTTP API")
    tsub = t.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)
    add = tsub.add_parser("add", parents=[common], help="make a token for an actor "
                          "(printed once)")
    add.add_argument("actor")
    add.add_argument("--admin", action="store_true",
                     help="the token may see and change every actor's sandboxes")
    add.set_defaults(handler=cmd_add)
    ls = tsub.add_parser("list", parents=[common], help="tokens (never their values)")
    ls.set_defaults(handler=cmd_list)
    rm = tsub.add_parser("remove", parents=[common], help="revoke a token by id")
    rm.add_argument("id", help="a token id (tok-…) from `tokens list`")
    rm.set_defaults(handler=cmd_remove)


def _client() -> Client:
    from sandboxer.cli._client import make_client

    return make_client()


def cmd_add(args: argparse.Namespace) -> int:
    import sys

    from sandboxer.cli.output import emit_json

    token, summary = _client().tokens_add(args.actor, admin=args.admin)
    if args.json:
        emit_json({"schema": "sandboxer.token/v1", **summary, "token": token})
    else:
        print(token)
        sys.stderr.write(f"sandboxer: token {summary['id']} for actor {summary['actor']}"
                         f"{' (admin)' if summary['admin'] else ''}; it is shown only now\n")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from sandboxer.cli.output import emit_json, table

    items = _client().tokens_list()
    if args.json:
        emit_json({"schema": "sandboxer.tokens/v1", "items": items})
    else:
        print(table(["id", "actor", "admin", "created (utc)", "last used (utc)"],
                    [[i["id"], i["actor"], "yes" if i["admin"] else "no",
                      i["created_at"][:19].replace("T", " "),
                      (i["last_used_at"] or "")[:19].replace("T", " ")] for i in items]))
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from sandboxer.cli.output import emit_json

    removed = _client().tokens_remove(args.id)
    if args.json:
        emit_json({"schema": "sandboxer.token-removed/v1", **removed})
    else:
        print(f"removed token {removed['id']} of actor {removed['actor']}")
    return 0
