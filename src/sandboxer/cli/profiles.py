"""`sandboxer profiles list | show ID | validate FILE...`"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("profiles", help="the profile catalog")
    psub = p.add_subparsers(dest="profiles_command", metavar="ACTION", required=True)
    ls = psub.add_parser("list", parents=[common], help="list profiles")
    ls.set_defaults(handler=cmd_list)
    show = psub.add_parser("show", parents=[common], help="show one merged profile")
    show.add_argument("id")
    show.set_defaults(handler=cmd_show)
    val = psub.add_parser("validate", parents=[common], help="check profile files")
    val.add_argument("files", nargs="+", metavar="FILE")
    val.set_defaults(handler=cmd_validate)


def cmd_list(args: argparse.Namespace) -> int:
    from sandboxer.cli._client import make_client
    from sandboxer.cli.output import emit_json, table

    items = make_client().list_profiles()
    if args.json:
        emit_json({"schema": "sandboxer.profiles/v1", "items": items})
    else:
        print(table(["id", "extension", "description"],
                    [[i["id"], i["extension"], i["description"]] for i in items]))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from sandboxer.cli._client import make_client
    from sandboxer.cli.output import emit_json

    profile = make_client().get_profile(args.id)
    doc = {"schema": "sandboxer.profile/v1", **profile.model_dump(mode="json")}
    if args.json:
        emit_json(doc)
    else:
        import yaml

        doc.pop("schema")
        print(yaml.safe_dump(doc, sort_keys=False).rstrip())
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sandboxer.cli._client import make_client
    from sandboxer.cli.output import emit_json, printable

    results = make_client().validate_profiles([Path(f) for f in args.files])
    if args.json:
        emit_json({"schema": "sandboxer.validation/v1", "results": results})
    else:
        for r in results:
            print(printable(f"ok     {r['file']} ({r['id']})" if r["ok"]
                            else f"error  {r['file']}: {r['error']}", keep=chr(10)))
    from sandboxer.errors import ProfileInvalid

    return 0 if all(r["ok"] for r in results) else ProfileInvalid.exit_code
