from __future__ import annotations

import pytest
from pydantic import ValidationError

from sandboxer.errors import Conflict, NotFound
from sandboxer.extensions.compose_ssh.config import TargetConfig, target_config, target_record
from sandboxer.store.sqlite import SqliteStore


def test_url_parts() -> None:
    t = TargetConfig(name="coulombcore", url="ssh://agent@10.0.0.5:2222")
    assert (t.user, t.host, t.port, t.endpoint_host) == ("agent", "10.0.0.5", 2222, "10.0.0.5")
    assert TargetConfig(name="x", url="ssh://u@h", public_host="pub").endpoint_host == "pub"
    assert TargetConfig(name="x", url="ssh://u@h").port == 22


@pytest.mark.parametrize(
    "fields",
    [{"name": "local", "url": "ssh://u@h"}, {"name": "Bad Name", "url": "ssh://u@h"},
     {"name": "x", "url": "http://u@h"}, {"name": "x", "url": "ssh://h"},
     {"name": "x", "url": "ssh://u@h/path"}, {"name": "x", "url": "ssh://u@h:99999"},
     {"name": "x", "url": "ssh://u:pw@h"}, {"name": "x", "url": "ssh://u@h", "capacity": 0},
     {"name": "x", "url": "ssh://u@h", "allow": ["everything"]}],
)
def test_bad_targets_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TargetConfig.model_validate(fields)


@pytest.mark.parametrize(
    ("fields", "words"),
    [({"url": "ssh://u@h:0"}, "port 1-65535"),
     ({"url": "ssh://u@h\n:22"}, "control characters"),
     ({"url": "ssh://u@h\r"}, "control characters"),
     ({"url": "ssh://u@h\t"}, "control characters"),
     ({"url": "ssh://u@h\x1b[2J"}, "control characters"),
     ({"url": "ssh://u@h /x"}, "control characters"),
     ({"url": "ssh://-oProxyCommand=id@h"}, "POSIX user name"),
     ({"url": "ssh://u@-oProxyCommand=id"}, "host name or IP address"),
     ({"url": "ssh://u@h", "public_host": "-oProxyCommand=id"}, "host name or IP address"),
     ({"url": "ssh://u@h", "public_host": "pub\nProxyCommand id"}, "host name or IP address"),
     ({"url": "ssh://u@h", "public_host": "pub\n"}, "host name or IP address"),
     ({"url": "ssh://u@h", "public_host": ""}, "host name or IP address")],
)
def test_hostile_urls_and_public_hosts_are_refused(fields: dict[str, object],
                                                   words: str) -> None:
    """Issue 12, item 2: a port 0 silently became 22, a newline was stored as given, and a
    public host could start with '-'."""
    with pytest.raises(ValidationError, match=words):
        TargetConfig.model_validate({"name": "x", **fields})


def test_ipv6_targets_still_work() -> None:
    t = TargetConfig(name="x", url="ssh://u@[::1]:2222", public_host="::1")
    assert (t.host, t.port, t.endpoint_host) == ("::1", 2222, "::1")


def test_store_round_trip(tmp_path: object) -> None:
    from pathlib import Path

    store = SqliteStore(Path(str(tmp_path)) / "s.db")
    t = TargetConfig(name="h1", url="ssh://u@h:2200", identity_file="/k", capacity=3,
                     host_keys=["[h]:2200 ssh-ed25519 AAAA"], allow=["devices"])
    store.add_target(target_record(t))
    (got,) = map(target_config, store.list_targets("ext.compose-ssh"))
    assert got.model_dump(exclude={"created_at"}) == t.model_dump(exclude={"created_at"})
    with pytest.raises(Conflict):
        store.add_target(target_record(t))
    store.remove_target("h1")
    with pytest.raises(NotFound):
        store.remove_target("h1")


def test_a_target_recorded_before_the_rule_is_reported_with_a_way_out(tmp_path: object) -> None:
    from pathlib import Path

    from sandboxer.errors import InvalidInput

    store = SqliteStore(Path(str(tmp_path)) / "s.db")
    old = target_record(TargetConfig(name="old", url="ssh://u@h"))
    store.add_target(old.model_copy(update={"config": {**old.config,
                                                       "public_host": "-oProxyCommand=id"}}))
    (rec,) = store.list_targets()
    with pytest.raises(InvalidInput, match="targets remove old"):
        target_config(rec)
    store.remove_target("old")
    assert store.list_targets() == []
