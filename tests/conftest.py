"""Shared fixtures: an isolated SANDBOXER_HOME per test and the test-only extension."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxer import redaction
from sandboxer.config import Settings

FAKE_EXT = Path(__file__).parent / "fixtures" / "fake_ext"
# The test-only extension is found through the entry-point group, like any plugin.
sys.path.insert(0, str(FAKE_EXT))

FAKE_PROFILE = """\
id: profile.fake
description: test double
extension: ext.fake
ttl: {default: 1h, max: 2h}
labels: {tier: test}
spec: {}
"""


@pytest.fixture(autouse=True)
def _forget_secret_values() -> Iterator[None]:
    """Values one test resolved must not mask another test's text (process-wide net)."""
    yield
    redaction.forget_all()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("SANDBOXER_HOME", str(h))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    return h


@pytest.fixture
def profiles_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "profiles"
    d.mkdir()
    (d / "fake.yaml").write_text(FAKE_PROFILE)
    monkeypatch.setenv("SANDBOXER_PROFILES", str(d))
    return d


@pytest.fixture
def settings(home: Path, profiles_dir: Path) -> Settings:
    return Settings.from_env()
