"""`sandboxer doctor`: what is missing on the machine that runs sandboxes (this one, or
the server's with ``SANDBOXER_URL`` set) and how to fix it."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    d = sub.add_parser("doctor", parents=[common], help="check the machine that runs sandboxes "
                       "(the server's through SANDBOXER_URL)")
    d.set_defaults(handler=cmd_doctor)


def checks() -> list[dict[str, Any]]:
    """The checks as documents: this machine's, or the server's through SANDBOXER_URL."""
    from sandboxer.cli._client import make_client

    return [c.document() for c in make_client().doctor()]


def cmd_doctor(args: argparse.Namespace) -> int:
    from sandboxer.cli.output import emit_json, table
    from sandboxer.errors import SandboxerError

    results = checks()
    ok = all(c["ok"] for c in results)
    if args.json:
        emit_json({"schema": "sandboxer.doctor/v1", "ok": ok, "checks": results})
    else:
        print(table(["check", "ok", "detail", "fix"],
                    [[c["name"], "yes" if c["ok"] else "NO", c["detail"], c["fix"]]
                     for c in results]))
    return 0 if ok else SandboxerError.exit_code
