"""Reconcile beside concurrent creates (the leader reconciles while other replicas create):
a sandbox whose row was written while reconcile listed a target's resources is claimed,
not destroyed as an orphan."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sandboxer_fake_ext import FakeExtension

from sandboxer.config import Settings
from sandboxer.manager import Manager
from sandboxer.models.extension import Handle, Target


def test_reconcile_spares_a_sandbox_created_while_it_lists(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    other = Manager(settings)  # another replica's create, on the same store
    made: list[Any] = []
    listed = FakeExtension.owned

    async def owned(self: FakeExtension, target: Target) -> list[Handle]:
        if not made:  # the create lands after reconcile started, before it lists
            made.append(await other.create("profile.fake"))
        return await listed(self, target)

    monkeypatch.setattr(FakeExtension, "owned", owned)
    removed = asyncio.run(Manager(settings).reconcile())
    assert made[0].id not in {h.sandbox_id for h in removed}
    assert (settings.home / "fake" / made[0].id).is_dir()
    assert other.get(made[0].id).state == "ready"
