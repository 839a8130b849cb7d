"""The CLI's read paths never load the service side (fastapi, uvicorn, httpx, mcp)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sandboxer.config import Settings

HEAVY = ("fastapi", "uvicorn", "httpx", "mcp", "starlette", "anyio")


@pytest.mark.parametrize("argv", [["list", "--json"], ["get", "sbx-aaaaaaaaaa", "--json"],
                                  ["events", "--json"], ["tokens", "list", "--json"]])
def test_read_paths_stay_light(settings: Settings, argv: list[str]) -> None:
    code = ("import sys\nfrom sandboxer.cli.main import main\n"
            f"main({argv!r})\n"
            f"bad = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r}]\n"
            "assert not bad, bad\n")
    env = {k: v for k, v in os.environ.items() if k not in ("SANDBOXER_URL",)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
