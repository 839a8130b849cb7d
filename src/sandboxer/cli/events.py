"""`sandboxer events [--follow]` and `sandboxer events publish`"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

MAX_LIMIT = 10_000  # as GET /v1/events


def _bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in ``low..high`` (a usage error, exit 2, if not)."""
    def parse(text: str) -> int:
        digits = text.strip()
        if not digits.isascii() or not digits.isdigit() or len(digits) > 20 or not (
                low <= int(digits) <= high):
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {low} to {high}, got {text!r}")
        return int(digits)
    return parse


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    e = sub.add_parser("events", parents=[common],
                       help="show the event outbox and its State Hub delivery state")
    e.add_argument("--sandbox", help="only this sandbox's events")
    e.add_argument("--after", type=_bounded(0, 2**62), default=0, metavar="SEQ",
                   help="only events after this sequence number (0 or more)")
    e.add_argument("--limit", type=_bounded(1, MAX_LIMIT), default=1000, metavar="N",
                   help=f"at most N events per read (1-{MAX_LIMIT})")
    e.add_argument("--follow", action="store_true", help="keep printing new events")
    e.set_defaults(handler=cmd_events)
    esub = e.add_subparsers(dest="events_command", metavar="ACTION")
    p = esub.add_parser("publish", parents=[common],
                        help="deliver undelivered events to State Hub once, then exit")
    p.set_defaults(handler=cmd_publish)


def _row(ev: Any) -> list[Any]:
    return [ev.seq, ev.time.strftime("%Y-%m-%d %H:%M:%S"), ev.type, ev.sandbox_id,
            ev.payload.get("state"), ev.delivery]


def cmd_events(args: argparse.Namespace) -> int:
    import json
    import sys
    import time

    from sandboxer.cli._client import make_client
    from sandboxer.cli.output import emit_json, printable, table

    client = make_client()
    items = client.events(after=args.after, sandbox_id=args.sandbox, limit=args.limit)
    if not args.follow:
        if args.json:
            emit_json({"schema": "sandboxer.events/v1",
                       "items": [ev.model_dump(mode="json", by_alias=True) for ev in items]})
        else:
            print(table(["seq", "time", "type", "sandbox", "state", "delivery"],
                        [_row(ev) for ev in items]))
        return 0
    last = args.after
    while True:  # one JSON document or table row per line, until interrupted
        for ev in items:
            if args.json:
                sys.stdout.write(json.dumps(ev.model_dump(mode="json", by_alias=True)) + "\n")
            else:
                sys.stdout.write("\t".join(map(printable, _row(ev))) + "\n")
            last = ev.seq
        sys.stdout.flush()
        time.sleep(0.5)
        items = client.events(after=last, sandbox_id=args.sandbox, limit=args.limit)


def cmd_publish(args: argparse.Namespace) -> int:
    """One pass over the outbox, this home's or the server's (the server's own publisher
    does the same)."""
    import sys

    from sandboxer.cli._client import make_client
    from sandboxer.cli.output import emit_json
    from sandboxer.errors import SandboxerError

    doc, _published = make_client().events_publish()  # Conflict when another leads
    if args.json:
        emit_json(doc)
    else:
        print(f"delivered {doc['delivered']}, failed {doc['failed']}, "
              f"{doc['remaining']} left undelivered")
        for line in doc["errors"]:
            sys.stderr.write(f"sandboxer: {line}\n")
    return SandboxerError.exit_code if doc["failed"] else 0
