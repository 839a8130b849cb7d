"""`sandboxer serve`: uvicorn on loopback by default; anything else needs TLS or consent."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from sandboxer.config import Settings
from sandboxer.errors import UsageError

if TYPE_CHECKING:
    from sandboxer.api.workers import Worker

log = logging.getLogger(__name__)
MAX_WORKERS = 64


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, tls_cert: Path | None, tls_key: Path | None,
                  allow_plaintext: bool) -> None:
    """Refuse to put bearer tokens on the network in the clear unless told to."""
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            raise UsageError(f"no such file: {path}")
    if tls_cert is None and not is_loopback(host):
        if not allow_plaintext:
            raise UsageError(
                f"refusing to serve plaintext HTTP on {host}, which is not a loopback address",
                hint="pass --tls-cert and --tls-key, or --allow-plaintext if something else "
                "(a TLS proxy, a private network) protects the tokens")
        log.warning("serving plaintext HTTP on %s: bearer tokens cross the network "
                    "unencrypted (--allow-plaintext)", host)


def bind(host: str, port: int, *, reuse_port: bool = False,
         listen: bool = True) -> socket.socket:
    """A TCP socket bound to ``host:port`` (listening unless told not to). ``reuse_port``:
    SO_REUSEPORT, so that several sockets of this user listen on one port and the kernel
    spreads new connections evenly over them (``serve --workers``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and the
    # accepted ones inherit this one's proto. Without it Nagle holds each response's body
    # behind its headers until the client's delayed ACK: ~40 ms per keep-alive request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from e
    if listen:
        sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server_class(worker: bool = False) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM after its graceful shutdown, so the process would die
        of the signal; `sandboxer serve` exits 0 once it has stopped cleanly instead. A
        worker takes SIGTERM from its supervisor only: a terminal's Ctrl-C reaches the
        whole process group, and a second signal would make uvicorn skip the graceful
        shutdown."""

        @override
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit)
                        for sig in (signal.SIGINT, signal.SIGTERM)}
            if worker:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server


def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 8765,
          tls_cert: Path | None = None, tls_key: Path | None = None,
          allow_plaintext: bool = False, grace: float = 30.0, workers: int = 1) -> int:
    """Run until SIGINT/SIGTERM; in-flight creates get ``grace`` seconds to finish.
    ``workers`` > 1: that many worker processes on one listening socket, supervised by
    this one (api/workers.py)."""
    from sandboxer.extensions.base import warm_up_all

    if not 1 <= workers <= MAX_WORKERS:
        raise UsageError(f"--workers {workers}: expected 1 to {MAX_WORKERS}",
                         hint="about one per CPU core is plenty")
    check_binding(host, tls_cert, tls_key, allow_plaintext)
    from sandboxer.store import open_store

    # Migrate once, under the store's lock, before anything serves; a database that cannot
    # be reached (or is newer than this code) stops the server here with its error.
    settings.ensure()
    open_store(settings).close()
    warm_up_all()  # a long-lived server probes new sandboxes in-process (workers inherit it)
    # Workers: this socket only holds the port (bound, not listening); each worker listens
    # on a socket of its own with SO_REUSEPORT. One shared listening socket would let the
    # worker that wakes first accept a whole burst of connections (keep-alive clients then
    # stay on it).
    sock = bind(host, port, reuse_port=workers > 1, listen=workers == 1)
    scheme = "https" if tls_cert else "http"
    shown = f"[{host}]" if ":" in host else host
    several = f", {workers} workers" if workers > 1 else ""
    url = f"{scheme}://{shown}:{sock.getsockname()[1]}"
    banner = (f"sandboxer: serving {url} (home {settings.home}{several}); the dashboard: "
              f"{url}/ (sign in with a token from `sandboxer tokens add ACTOR`)\n")
    if workers == 1:
        def started() -> None:
            sys.stderr.write(banner)
            sys.stderr.flush()

        served = run_server(settings, sock, tls_cert=tls_cert, tls_key=tls_key,
                            grace=grace, on_started=started)
        return 0 if served else 1
    import uvicorn  # noqa: F401 - imported once here, shared by the forked workers

    from sandboxer.api import app, routes  # noqa: F401 - the same
    from sandboxer.api.workers import Supervisor

    def work(worker: Worker) -> None:
        own = bind(host, sock.getsockname()[1], reuse_port=True)
        sock.close()
        if not run_server(settings, own, tls_cert=tls_cert, tls_key=tls_key, grace=grace,
                          on_started=worker.started, worker=worker):
            raise SystemExit(1)

    return Supervisor(workers, grace=grace, banner=banner).run(work)


def run_server(settings: Settings, sock: socket.socket, *, tls_cert: Path | None,
               tls_key: Path | None, grace: float, on_started: Callable[[], None],
               worker: Worker | None = None) -> bool:
    """One uvicorn server (this process's own app, service and store) on ``sock`` until
    it is told to stop; ``on_started`` once it accepts requests (lifespan done). False
    when it never started (the lifespan failed: uvicorn logged why)."""
    import uvicorn

    from sandboxer.api.app import create_app

    app: Any = create_app(settings, grace=grace)
    stopping: asyncio.Event = app.state.stopping  # the dashboard's streams end on it
    if worker is not None:
        app = worker.asgi(app)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on",
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        timeout_graceful_shutdown=max(1, round(grace)), server_header=False,
    )
    server = _server_class(worker is not None)(config)

    async def main() -> None:
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        if worker is not None:
            worker.watch_parent(lambda: setattr(server, "should_exit", True))
        while not server.started and not task.done():  # signals handled, lifespan done
            await asyncio.sleep(0.01)
        if server.started:
            on_started()
        while not task.done():  # uvicorn waits for open responses: end the streams now
            if server.should_exit:
                stopping.set()
            await asyncio.wait({task}, timeout=0.2)
        await task

    asyncio.run(main())
    return bool(server.started)
