"""Core's keeper process for one extension: ``python -m sandboxer.service.daemon``.

It keeps the extension's leases (reaping on an interval) and runs the extension's
``Housekeeping`` capability, if any, handing it a host; it exits once idle.
"""

from __future__ import annotations

from sandboxer.config import Settings


def ensure(settings: Settings, extension: str) -> None:
    """Start the keeper for ``extension`` in ``settings.home`` unless one runs."""
    raise NotImplementedError  # i13-daemon
