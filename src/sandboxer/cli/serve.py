"""`sandboxer serve [--host H] [--port P] [--tls-cert F --tls-key F] [--allow-plaintext]`"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("serve", parents=[common],
                       help="run the HTTP API (plus the reaper and the State Hub publisher)")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; anything but loopback needs "
                   "TLS or --allow-plaintext)")
    s.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free)")
    s.add_argument("--tls-cert", metavar="FILE", help="PEM certificate (chain) for HTTPS")
    s.add_argument("--tls-key", metavar="FILE", help="PEM private key for HTTPS")
    s.add_argument("--allow-plaintext", action="store_true",
                   help="serve plain HTTP on a non-loopback address (logged as a warning)")
    s.add_argument("--grace", type=float, default=30.0, metavar="SECONDS",
                   help="on SIGTERM, how long creates in flight may finish (default 30)")
    s.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from sandboxer.cli._client import local_only

    local_only("serve", "a server serves its own store (SANDBOXER_HOME or "
               "SANDBOXER_DATABASE_URL), and SANDBOXER_URL would name another server to "
               "talk to")
    from sandboxer import redaction
    from sandboxer.api.server import serve
    from sandboxer.config import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per State Hub request
    redaction.install()  # again: basicConfig added a handler after main() installed it
    return serve(Settings.from_env(), host=args.host, port=args.port,
                 tls_cert=Path(args.tls_cert) if args.tls_cert else None,
                 tls_key=Path(args.tls_key) if args.tls_key else None,
                 allow_plaintext=args.allow_plaintext, grace=args.grace)
