"""A real PostgreSQL server for the tests, and a fresh database per test.

``.ci/run`` starts one server (Debian's PostgreSQL 15, as the ``postgres`` user, on a
private port and socket directory) and exports ``SANDBOXER_TEST_DATABASE_URL``: an admin
URL of that server. Without it, the first test that asks starts a server of its own the
same way (``initdb`` + ``postgres`` under a temporary directory) and stops it at the end of
the session; where the machine has no PostgreSQL binaries, those tests are skipped.

Each test gets its own database (``CREATE DATABASE sbx_<random>``), dropped afterwards.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

PG_BIN = Path(os.environ.get("SANDBOXER_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
URL_VARIABLE = "SANDBOXER_TEST_DATABASE_URL"


@dataclass
class PgServer:
    """A running server: ``admin_url`` may create and drop databases."""

    admin_url: str

    def url_for(self, database: str) -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path="/" + database))

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)  # type: ignore[arg-type]  # names are generated, never input

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = "sbx_" + secrets.token_hex(6)
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextmanager
    def database(self) -> Iterator[str]:
        url = self.create_database()
        try:
            yield url
        finally:
            self.drop_database(url)


@dataclass(frozen=True)
class Database:
    """The store backend a test runs on: ``url`` is its SANDBOXER_DATABASE_URL, None for
    the SQLite file in the home."""

    backend: str
    url: str | None

    def env(self) -> dict[str, str]:
        """What to add to a subprocess's environment (``sandboxer serve``, the CLI)."""
        return {} if self.url is None else {"SANDBOXER_DATABASE_URL": self.url}


def available() -> str | None:
    """Why no server can be had here, or None."""
    if os.environ.get(URL_VARIABLE):
        return None
    if not (PG_BIN / "postgres").exists():
        return (f"no PostgreSQL server binaries in {PG_BIN} (Debian: apt-get install "
                f"postgresql), and {URL_VARIABLE} is not set")
    if os.geteuid() != 0:
        return "starting a private PostgreSQL server needs root (it runs as 'postgres')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_server() -> Iterator[PgServer]:
    """``initdb`` + ``postgres`` as the ``postgres`` user under a fresh directory."""
    user = pwd.getpwnam("postgres")
    top = Path(tempfile.mkdtemp(prefix="sbxpg.", dir="/var/tmp"))
    top.chmod(0o700)
    os.chown(top, user.pw_uid, user.pw_gid)
    data, sock = top / "data", top / "sock"
    sock.mkdir()
    os.chown(sock, user.pw_uid, user.pw_gid)
    password = secrets.token_urlsafe(18)
    pwfile = top / "pw"
    pwfile.write_text(password + "\n")
    os.chown(pwfile, user.pw_uid, user.pw_gid)
    pwfile.chmod(0o600)
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_pg, str(PG_BIN / "initdb"), "-D", str(data), "-U", "sandboxer",
                    "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                    "--no-instructions"], check=True, capture_output=True, timeout=120)
    pwfile.unlink()
    port = _free_port()
    log = (top / "postgres.log").open("wb")
    proc = subprocess.Popen(
        [*as_pg, str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port),
         "-k", str(sock), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
         "-c", "max_connections=400"],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    url = f"postgresql://sandboxer:{quote(password, safe='')}@127.0.0.1:{port}/postgres"
    try:
        _wait(url, proc, top / "postgres.log")
        yield PgServer(url)
    finally:
        proc.terminate()  # smart shutdown; then fast (SIGINT) if clients linger
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.send_signal(2)
            proc.wait(20)
        log.close()
        shutil.rmtree(top, ignore_errors=True)


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"PostgreSQL did not start:\n{log.read_text()}") from None
            time.sleep(0.1)


@contextmanager
def server() -> Iterator[PgServer]:
    """The CI server named by SANDBOXER_TEST_DATABASE_URL, else a private one."""
    url = os.environ.get(URL_VARIABLE)
    if url:
        yield PgServer(url)
        return
    with private_server() as started:
        yield started
