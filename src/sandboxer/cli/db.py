"""`sandboxer db migrate` — bring the state store's schema up to this version's.

Acts on the store this machine's settings name (``SANDBOXER_DATABASE_URL``, else the SQLite
file in ``$SANDBOXER_HOME``), never through ``SANDBOXER_URL``: migrating is the operator's.
Opening a store migrates it anyway; this command does it on purpose (before starting
replicas of a new version) and says what it did.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    d = sub.add_parser("db", help="the state store's database")
    dsub = d.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    m = dsub.add_parser("migrate", parents=[common],
                        help="apply the schema migrations this version has and the "
                        "database lacks (under a lock: safe while replicas start)")
    m.set_defaults(handler=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    from sandboxer.cli._client import local_only

    local_only("db migrate", "it talks to the database directly (SANDBOXER_DATABASE_URL or "
               "$SANDBOXER_HOME), never through a server")
    from sandboxer.cli.output import emit_json
    from sandboxer.config import Settings
    from sandboxer.store import migrate

    settings = Settings.from_env()
    settings.ensure()
    done = migrate(settings)
    if args.json:
        emit_json(done)
    elif done["from"] == done["to"]:
        print(f"{done['database']} ({done['backend']}): already at schema {done['to']}")
    else:
        print(f"{done['database']} ({done['backend']}): migrated from schema {done['from']} "
              f"to {done['to']}")
    return 0
