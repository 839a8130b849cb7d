"""Run the installed `sandboxer` console script in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.support_env import KEEP_ENV

SANDBOXER = shutil.which("sandboxer", path=os.path.dirname(sys.executable)) or shutil.which(
    "sandboxer"
)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Cli = Callable[..., Result]


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_") or k in KEEP_ENV}
    env["SANDBOXER_HOME"] = str(tmp_path / "home")
    env["HOME"] = str(tmp_path / "user")
    return env


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Iterator[Cli]:
    if SANDBOXER is None:
        pytest.fail("the sandboxer console script is not installed (pip install -e .)")
    created: list[str] = []

    def run(*args: str | bytes, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
        done = subprocess.run([SANDBOXER, *args], capture_output=True, timeout=timeout,
                              env=env or cli_env, stdin=subprocess.DEVNULL, check=False)
        res = Result(done.returncode, done.stdout.decode(errors="replace"),
                     done.stderr.decode(errors="replace"))
        if args[:1] == ("create",) and res.code == 0 and "--json" in args:
            created.append(res.json()["id"])
        return res

    yield run
    if created:
        subprocess.run([SANDBOXER, "destroy", *created], capture_output=True, env=cli_env,
                       timeout=120, check=False)
