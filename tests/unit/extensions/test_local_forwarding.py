"""ext.local's forwarding rules: which destinations a direct-tcpip channel may name."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxer.extensions.local import forwarding, jail
from sandboxer.extensions.local.spec import LocalSpec


def test_checked_ports() -> None:
    assert forwarding.checked_ports(None) == frozenset()
    assert forwarding.checked_ports([8080, 22]) == frozenset({22, 8080})
    for bad in ("8080", [0], [65536], [True], ["80"], {"a": 1}, list(range(1, 40))):
        with pytest.raises(ValueError, match="TCP ports"):
            forwarding.checked_ports(bad)


def test_refusal() -> None:
    ports = frozenset({8080})
    for host in ("127.0.0.1", "localhost", "::1"):
        assert forwarding.refusal("sbx-a", ports, host, 8080) is None
    assert "forwarding is off" in str(forwarding.refusal("sbx-a", frozenset(), "127.0.0.1",
                                                         8080))
    assert "not forwarded" in str(forwarding.refusal("sbx-a", ports, "127.0.0.1", 8081))
    for host in ("127.0.0.2", "0.0.0.0", "LOCALHOST", "host.docker.internal", "",  # noqa: S104
                 "::ffff:127.0.0.1", "[::1]", "x" * 500):
        why = forwarding.refusal("sbx-a", ports, host, 8080)
        assert why is not None
        assert "own loopback" in why
        assert len(why) < 250  # a long name is cut


def test_the_sftp_subsystem_runs_sftp_server_through_the_spawner() -> None:
    s = jail.Session("sbx-a", "dev", Path("/w"), LocalSpec(), program=(jail.SFTP_SERVER,))
    assert jail.session_argv(s) == [*jail.SPAWNER, "0", jail.SFTP_SERVER]
