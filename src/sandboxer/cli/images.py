"""`sandboxer images build NAME [--target T]`"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    i = sub.add_parser("images", help="sandbox images built from Debian packages")
    isub = i.add_subparsers(dest="images_command", metavar="ACTION", required=True)
    b = isub.add_parser("build", parents=[common],
                        help="run a recipe from images/ (e.g. base) for a target")
    b.add_argument("name", help="recipe name: images/sandbox-NAME/build.sh")
    b.add_argument("--target", default="local", help="where the image goes (default: local)")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    b.set_defaults(handler=cmd_build)


def cmd_build(args: argparse.Namespace) -> int:
    from sandboxer.cli._client import make_client
    from sandboxer.cli.output import Progress, emit_json

    progress = Progress(quiet=args.quiet)
    try:
        built = make_client(progress=progress).images_build(args.name, target=args.target)
    finally:
        progress.done()
    if args.json:
        emit_json({"schema": "sandboxer.image/v1", **built})
    else:
        print(f"built {built['image']} on target {built['target']}")
    return 0
