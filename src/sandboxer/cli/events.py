"""`sandboxer events [--follow]`"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    e = sub.add_parser("events", parents=[common], help="show the event outbox")
    e.add_argument("--sandbox", help="only this sandbox's events")
    e.add_argument("--after", type=int, default=0, help="only events after this sequence")
    e.add_argument("--limit", type=int, default=1000, help="at most this many events")
    e.add_argument("--follow", action="store_true", help="keep printing new events")
    e.set_defaults(handler=cmd_events)


def cmd_events(args: argparse.Namespace) -> int:
    import json
    import sys
    import time

    from sandboxer.cli._client import make_client
    from sandboxer.cli.output import emit_json, table

    client = make_client()
    items = client.events(after=args.after, sandbox_id=args.sandbox, limit=args.limit)
    if not args.follow:
        if args.json:
            emit_json({"schema": "sandboxer.events/v1",
                       "items": [ev.model_dump(mode="json", by_alias=True) for ev in items]})
        else:
            print(table(["seq", "time", "type", "sandbox", "state"],
                        [[ev.seq, ev.time.strftime("%Y-%m-%d %H:%M:%S"), ev.type,
                          ev.sandbox_id, ev.payload.get("state")] for ev in items]))
        return 0
    last = args.after
    while True:  # one JSON document or table row per line, until interrupted
        for ev in items:
            if args.json:
                sys.stdout.write(json.dumps(ev.model_dump(mode="json", by_alias=True)) + "\n")
            else:
                sys.stdout.write(f"{ev.seq}\t{ev.time:%Y-%m-%d %H:%M:%S}\t{ev.type}\t"
                                 f"{ev.sandbox_id}\t{ev.payload.get('state')}\n")
            last = ev.seq
        sys.stdout.flush()
        time.sleep(0.5)
        items = client.events(after=last, sandbox_id=args.sandbox, limit=args.limit)
