"""`sandboxer images build NAME|PROFILE|TEMPLATE [--target T] [--var K=V] [--force]`"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    i = sub.add_parser("images", help="sandbox images built from Debian packages")
    isub = i.add_subparsers(dest="images_command", metavar="ACTION", required=True)
    b = isub.add_parser("build", parents=[common],
                        help="build what a profile needs (compose images or a Packer VM "
                        "image), a recipe from images/ (e.g. base), or a Packer template")
    b.add_argument("name", help="a profile id (profile.agent-dev: every image it uses), a "
                   "recipe name (images/sandbox-NAME/build.sh) or a Packer template (.json)")
    b.add_argument("--target", default="local", help="where a recipe's image goes "
                   "(default: local)")
    b.add_argument("--var", action="append", default=[], metavar="KEY=VALUE",
                   help="a Packer variable for a template path (repeatable)")
    b.add_argument("--force", action="store_true",
                   help="rebuild a Packer image even when it is cached")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    b.set_defaults(handler=cmd_build)


def cmd_build(args: argparse.Namespace) -> int:
    from sandboxer.cli._client import make_client
    from sandboxer.cli.output import Progress, emit_json
    from sandboxer.errors import UsageError

    variables: dict[str, str] = {}
    for item in args.var:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--var {item!r}: expected KEY=VALUE")
        variables[key] = value
    progress = Progress(quiet=args.quiet)
    try:
        built = make_client(progress=progress).images_build(
            args.name, target=args.target, variables=variables, force=args.force)
    finally:
        progress.done()
    if args.json:
        emit_json({"schema": "sandboxer.image/v1", **built})
    elif built.get("built") is False:
        print(f"{built['image']} is cached at {built['path']}")
    else:
        print(f"built {built['image']} on target {built['target']}")
    return 0
