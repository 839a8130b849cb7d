"""The lease keeper of ext.vm-packer: one small process per ``SANDBOXER_HOME``.

QEMU cannot enforce a lease, and a VM must not outlive its lease just because nobody ran
the CLI. The keeper is started on demand by provision, holds an flock on
``run/vm-keeper.lock``, runs ``Manager.reap(extension="ext.vm-packer")`` every few seconds
(the same code as every CLI call and `sandboxer reap`), and exits once no ext.vm-packer
sandbox has been live for a while. A second keeper finds the lock taken and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import sandboxer
from sandboxer import childenv, envvars
from sandboxer.config import Settings

log = logging.getLogger(__name__)
EXTENSION = "ext.vm-packer"


def lock_path(settings: Settings) -> Path:
    return settings.run_dir / "vm-keeper.lock"


def running(settings: Settings) -> bool:
    fd = os.open(lock_path(settings), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def ensure_running(settings: Settings) -> None:
    """Start the keeper unless one holds the lock (cheap: one flock attempt)."""
    settings.ensure()
    if running(settings):
        return
    # The keeper outlives the create that starts it: the system basics and sand-boxer's own
    # settings (none that looks like a credential), never a copy of the caller's variables.
    caller = {**os.environ, **settings.env}
    env = childenv.allowed(caller, prefixes=("SANDBOXER_",))
    env["SANDBOXER_HOME"] = str(settings.home)
    src = str(Path(sandboxer.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, caller.get("PYTHONPATH")) if p)
    fd = os.open(settings.log_dir / "vm-keeper.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                 0o600)
    try:
        subprocess.Popen([sys.executable, "-m", "sandboxer.extensions.vm_packer.keeper",
                          "--home", str(settings.home)], stdin=subprocess.DEVNULL,
                         stdout=fd, stderr=fd, start_new_session=True, close_fds=True,
                         env=env)
    finally:
        os.close(fd)


async def _loop(settings: Settings, interval: float, idle_exit: float) -> None:
    from sandboxer.manager import Manager
    from sandboxer.store import open_store

    store = open_store(settings)
    idle_since: float | None = None
    while True:
        try:
            await Manager(settings, store=store).reap(extension=EXTENSION)
            live = store.query_documents(states=["provisioning", "ready", "destroying"],
                                         extension=EXTENSION)
        except Exception as e:
            log.warning("reaping failed: %s", e)
            live = [{}]
        if live:
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= idle_exit:
            return
        await asyncio.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sandboxer-vm-keeper")
    ap.add_argument("--home", required=True)
    args = ap.parse_args(argv)
    settings = Settings.from_env({**os.environ, "SANDBOXER_HOME": args.home})
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    from sandboxer.secrets import redaction

    redaction.install()
    fd = os.open(lock_path(settings), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0
    interval = envvars.vm_keeper_interval(settings.env)
    log.info("vm lease keeper %d for %s", os.getpid(), settings.home)
    try:
        asyncio.run(_loop(settings, interval, idle_exit=30.0))
    finally:
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
