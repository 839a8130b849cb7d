"""The SDK's snapshot and fork calls (``HttpClient``'s; docs/api.md#snapshots)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from sandboxer.models.sandbox import SandboxStatus
    from sandboxer.models.snapshot import SnapshotStatus

# A snapshot (or a fork, which creates) returns once the data is recorded: it may copy a
# whole workspace or disk.
SNAPSHOT_TIMEOUT = 1800.0


class _Calls(Protocol):
    url: str
    progress: Callable[[str], None] | None

    def _call(self, method: str, path: str, *, timeout: float | None = None,
              **kwargs: Any) -> Any: ...


def _seg(value: str) -> str:
    from sandboxer.client.http import _seg as segment

    return segment(value)


def _body(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v not in (None, {})}


class SnapshotCalls:
    """``/v1/sandboxes/{id}/snapshot``, ``/v1/snapshots``, ``/v1/sandboxes/{id}/fork``."""

    def snapshot(self: _Calls, sandbox_id: str, *, name: str | None = None,
                 retain: str | None = None) -> SnapshotStatus:
        """``POST /v1/sandboxes/{id}/snapshot``."""
        from sandboxer.models.snapshot import SnapshotStatus

        if self.progress:
            self.progress(f"{sandbox_id}: snapshot on {self.url}")
        return SnapshotStatus.model_validate(self._call(
            "POST", f"/v1/sandboxes/{_seg(sandbox_id)}/snapshot", timeout=SNAPSHOT_TIMEOUT,
            json=_body(name=name, retain=retain)))

    def get_snapshot(self: _Calls, snapshot_id: str) -> SnapshotStatus:
        """``GET /v1/snapshots/{id}``."""
        from sandboxer.models.snapshot import SnapshotStatus

        return SnapshotStatus.model_validate(
            self._call("GET", f"/v1/snapshots/{_seg(snapshot_id)}"))

    def list_snapshots(self: _Calls, *, sandbox_id: str | None = None,
                       all: bool = False) -> list[SnapshotStatus]:
        """``GET /v1/snapshots[?sandbox=ID&all=true]``."""
        from sandboxer.models.snapshot import SnapshotStatus

        params: dict[str, str] = {}
        if sandbox_id is not None:
            params["sandbox"] = sandbox_id
        if all:
            params["all"] = "true"
        items = self._call("GET", "/v1/snapshots", params=params)["items"]
        return [SnapshotStatus.model_validate(d) for d in items]

    def delete_snapshot(self: _Calls, snapshot_id: str) -> SnapshotStatus:
        """``DELETE /v1/snapshots/{id}``."""
        from sandboxer.models.snapshot import SnapshotStatus

        return SnapshotStatus.model_validate(self._call(
            "DELETE", f"/v1/snapshots/{_seg(snapshot_id)}", timeout=SNAPSHOT_TIMEOUT))

    def fork(self: _Calls, sandbox_id: str, *, ttl: str | None = None,
             labels: dict[str, str] | None = None, name: str | None = None,
             actor: str | None = None) -> SandboxStatus:
        """``POST /v1/sandboxes/{id}/fork``: returns once the new sandbox is ready."""
        from sandboxer.models.sandbox import SandboxStatus

        if self.progress:
            self.progress(f"{sandbox_id}: fork on {self.url}")
        return SandboxStatus.model_validate(self._call(
            "POST", f"/v1/sandboxes/{_seg(sandbox_id)}/fork", timeout=SNAPSHOT_TIMEOUT * 2,
            json=_body(ttl=ttl, labels=labels, name=name, actor=actor)))
