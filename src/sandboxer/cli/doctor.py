"""`sandboxer doctor`: what is missing on this machine and how to fix it."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    d = sub.add_parser("doctor", parents=[common], help="check this machine")
    d.set_defaults(handler=cmd_doctor)


def checks() -> list[dict[str, Any]]:
    """This machine's checks as documents (always local, even with SANDBOXER_URL set)."""
    from sandboxer.cli._client import local_client

    return [c.document() for c in local_client().doctor()]


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
