"""`sandboxer serve` as a real subprocess, on a free loopback port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.conftest import SANDBOXER
from tests.support_env import KEEP_ENV

FAKE_EXT = Path(__file__).parents[2] / "fixtures" / "fake_ext"
FAKE_PROFILE = ("id: profile.fake\ndescription: test double\nextension: ext.fake\n"
                "ttl: {default: 1h, max: 2h}\nspec: {}\n")


class Serve:
    """One `sandboxer serve --port 0` process; ``url`` once it listens."""

    def __init__(self, env: dict[str, str], log: Path, grace: str = "5",
                 args: tuple[str, ...] = ()) -> None:
        self.log = log
        start = log.stat().st_size if log.exists() else 0  # a restart appends to the log
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            [SANDBOXER, "serve", "--port", "0", "--grace", grace, *args], env=env,
            stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._out)
        deadline = time.monotonic() + 30
        self.url = ""
        while not self.url:
            found = re.findall(r"serving (http://127\.0\.0\.1:\d+)", log.read_text()[start:])
            if found:
                self.url = found[-1]
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"sandboxer serve did not start:\n{log.read_text()}")
            else:
                time.sleep(0.05)

    def kill(self) -> int:
        """``kill -9``: nothing of the process runs after it."""
        self.proc.send_signal(signal.SIGKILL)
        try:
            return self.proc.wait(30)
        finally:
            self._out.close()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            self._out.close()


def serve_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a server over the test-only ext.fake, on the store backend the
    test's ``database`` fixture chose (its SANDBOXER_DATABASE_URL is passed on)."""
    profiles = home.parent / "fake-profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    (profiles / "fake.yaml").write_text(FAKE_PROFILE)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SANDBOXER_") or k == "SANDBOXER_DATABASE_URL"
           or k in KEEP_ENV}
    env.update(SANDBOXER_HOME=str(home), SANDBOXER_PROFILES=str(profiles),
               PYTHONPATH=os.pathsep.join([str(FAKE_EXT), *sys.path]), **extra)
    return env
