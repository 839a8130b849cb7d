"""Key pairs generated ahead: in memory only, each handed out once, none to a fork."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sandboxer.config import Settings
from sandboxer.extensions import _keys


@pytest.fixture
def pool() -> _keys._Pairs:
    pairs = _keys._Pairs()
    pairs.enabled = True
    return pairs


def test_without_warm_up_nothing_is_kept() -> None:
    assert _keys._Pairs().take() is None


def test_pairs_are_made_ahead_and_handed_out_once(pool: _keys._Pairs) -> None:
    pool._fill()
    assert len(pool.pairs) == pool.SIZE
    taken = [pool.take() for _ in range(4)]
    assert len({p[0] for p in taken if p}) == 4


def test_a_forked_child_starts_with_none(pool: _keys._Pairs) -> None:
    pool._fill()
    pid = os.fork()
    if pid == 0:
        pool.reset()
        os._exit(0 if not pool.pairs else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    _keys._pairs.pairs.append((b"x", "y"))
    pid = os.fork()
    if pid == 0:  # the registered fork handler empties the module's pool
        os._exit(0 if not _keys._pairs.pairs else 1)
    _, status = os.waitpid(pid, 0)
    _keys._pairs.pairs.clear()
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_pooled_pair_becomes_one_sandbox_s_files(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = _keys._Pairs()
    pairs.enabled = True
    pairs._fill()
    monkeypatch.setattr(_keys, "_pairs", pairs)
    s = Settings.from_env({"SANDBOXER_HOME": str(tmp_path / "home")})
    keys = _keys.generate(s, "sbx-1")
    assert keys.client_public.endswith(" sbx-1")
    assert stat.S_IMODE(keys.identity.stat().st_mode) == 0o600
    assert _keys.public_of(keys.host_key) == keys.host_public
    assert keys.identity.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
