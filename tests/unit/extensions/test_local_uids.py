"""ext.local host uids: claimed by exclusive files, remembered by a long-lived process."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxer.extensions.local import uids

BASE = 3_000_000  # far above any uid a process of this machine runs as


@pytest.fixture(autouse=True)
def _fresh_memory() -> None:
    uids._memory.reset()


def owner(tmp_path: Path, name: str) -> Path:
    d = tmp_path / "root" / name
    d.mkdir(parents=True)
    return d


def test_claims_are_exclusive_and_name_their_sandbox(tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    claims.mkdir()
    a, b = owner(tmp_path, "sbx-a"), owner(tmp_path, "sbx-b")
    first = uids.claim(claims, BASE, a, set)
    second = uids.claim(claims, BASE, b, set)
    assert (first, second) == (BASE, BASE + 1)
    assert (claims / str(first)).read_text() == f"{a}\n"
    uids.release(claims, first, a)
    assert not (claims / str(first)).exists()
    assert uids.claim(claims, BASE, owner(tmp_path, "sbx-c"), set) == BASE  # free again


def test_another_process_claim_is_respected_and_a_stale_one_taken_over(tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    claims.mkdir()
    live = owner(tmp_path, "sbx-other-home")
    (claims / str(BASE)).write_text(f"{live}\n")                       # another home's
    (claims / str(BASE + 1)).write_text(f"{tmp_path / 'gone'}\n")     # its dir is gone
    got = uids.claim(claims, BASE, owner(tmp_path, "sbx-a"), set)
    assert got == BASE + 1
    assert (claims / str(BASE)).read_text() == f"{live}\n"


def test_uids_in_use_otherwise_are_skipped(tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    claims.mkdir()
    got = uids.claim(claims, BASE, owner(tmp_path, "sbx-a"), lambda: {BASE, BASE + 1})
    assert got == BASE + 2


def test_a_release_elsewhere_is_found_again_when_the_range_seems_full(
        tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    claims.mkdir()
    uids._memory.claimed.update(range(BASE, BASE + uids.SPAN))  # remembered as taken
    assert uids.claim(claims, BASE, owner(tmp_path, "sbx-a"), set) == BASE


def test_a_full_range_is_an_error(tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    claims.mkdir()
    with pytest.raises(LookupError, match="no free host uid"):
        uids.claim(claims, BASE, owner(tmp_path, "sbx-a"),
                   lambda: range(BASE, BASE + uids.SPAN))


def test_processes_are_scanned_once_then_in_the_background() -> None:
    first = uids._memory.busy()
    assert first  # this process's uid at least
    assert uids._memory.busy() is first  # remembered, not scanned again
