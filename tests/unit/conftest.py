"""Unit tests run the CLI in this process (``main([...])``) with the test-only extension
on this process's ``sys.path``: they use the in-process client, never the local service
(a separate process that could not import that extension). The service has its own
tests (tests/unit/service/test_local_service.py, tests/integration/test_local_service.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _in_process_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOXER_LOCAL_SERVICE", "0")
