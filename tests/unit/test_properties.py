"""Property tests over every value parser and validator: any input gives a value or the
project's input error (``ValueError`` at the value layer, which every shell turns into
``InvalidInput``; ``InvalidInput``/``SecretRefInvalid`` where a SandboxerError is raised;
a pydantic ``ValidationError`` in models), never another exception."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sandboxer import envvars
from sandboxer.api.models import CreateRequest, ExtendRequest
from sandboxer.catalog import Catalog
from sandboxer.cli._client import parse_labels
from sandboxer.cli.events import _bounded
from sandboxer.cli.output import printable, table
from sandboxer.config import Settings
from sandboxer.errors import InvalidInput, SandboxerError
from sandboxer.extensions.compose_ssh.config import TargetConfig
from sandboxer.extensions.compose_ssh.spec import Resources
from sandboxer.extensions.local.spec import parse_size as local_size
from sandboxer.extensions.vm_packer.spec import size_bytes as vm_size
from sandboxer.models.profile import Profile
from sandboxer.models.reachability import check_alias_template, check_name, check_port
from sandboxer.reachability import parse_port_range, resolve_tunnel
from sandboxer.secrets import refs
from sandboxer.values import (
    MAX_DURATION,
    config_value,
    format_duration,
    parse_duration,
    validate_actor,
    validate_label,
    validate_name,
)

# Text that looks like what the parsers expect, mixed with anything at all.
GRAMMAR = st.sampled_from(list("0123456789smhdSMHD.:/#@+=-_ \t\n\r\x00\x1b%${}\"'\\é"))
near = st.text(GRAMMAR, max_size=24)
anything = st.one_of(near, st.text(max_size=40))
values: st.SearchStrategy[Any] = st.one_of(
    anything, st.integers(), st.floats(allow_nan=True), st.booleans(), st.none(),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.text(max_size=3),
                                                         max_size=2))
many = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def value_or(errors: tuple[type[BaseException], ...], fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except errors:
        return None


@many
@given(st.one_of(anything, st.integers(), st.floats(), st.booleans(),
                 st.timedeltas(min_value=timedelta(days=-1e6), max_value=timedelta(days=1e6))))
def test_durations(text: Any) -> None:
    got = value_or((ValueError,), lambda: parse_duration(text))
    if got is not None:
        assert timedelta(0) < got <= MAX_DURATION
        if isinstance(text, str):
            assert parse_duration(format_duration(got)) == got


@many
@given(st.from_regex(r"[0-9]{1,9}[smhd]", fullmatch=True))
def test_every_api_ttl_is_a_duration_or_invalid_input(ttl: str) -> None:
    ExtendRequest(ttl=ttl)
    value_or((ValueError,), lambda: parse_duration(ttl))  # was OverflowError downstream


@many
@given(anything, anything)
def test_labels(key: str, value: str) -> None:
    message = ""
    try:
        validate_label(key, value)
    except ValueError as e:
        message = str(e)
    if message:
        assert len(value) < 4 or value in key or value not in message  # never echoed
        return
    assert "\n" not in key + value
    assert re.fullmatch(r"[a-z0-9][a-z0-9._/-]{0,62}", key)


@many
@given(st.lists(anything, max_size=3))
def test_cli_labels(items: list[str]) -> None:
    value_or((InvalidInput,), lambda: parse_labels(items))


@many
@given(values)
def test_actors_and_names(text: Any) -> None:
    actor = value_or((ValueError,), lambda: validate_actor(text))
    if actor is not None:
        assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", actor)
    name = value_or((ValueError,), lambda: validate_name(text))
    if name is not None:
        assert name.isprintable() or not any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f
                                             for c in name)


@many
@given(anything, anything, st.booleans())
def test_secret_refs(name: str, text: str, production: bool) -> None:
    env = {"SANDBOXER_ENV": "production"} if production else {}
    one = refs.parse_one(name, text, home="/home/u")
    assert isinstance(one, str | refs.BaoRef | refs.EnvRef | refs.FileRef)
    parsed = value_or((SandboxerError,), lambda: refs.parse("profile.p", [(name, text)], env))
    if parsed:
        assert "\n" not in parsed[0].text.strip(" ") or isinstance(parsed[0], refs.FileRef)
        if isinstance(parsed[0], refs.EnvRef):
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", parsed[0].var)


@many
@given(anything)
def test_sizes(text: str) -> None:
    value_or((ValueError,), lambda: local_size(text))
    value_or((ValueError,), lambda: vm_size(text))
    value_or((ValidationError,), lambda: Resources(memory=text))


@many
@given(values)
def test_ports_names_and_aliases(value: Any) -> None:
    value_or((ValueError,), lambda: check_port(value, "port"))
    if isinstance(value, str):
        value_or((ValueError,), lambda: parse_port_range(value))
        value_or((ValueError,), lambda: check_name(value, "name"))
        value_or((ValueError,), lambda: check_alias_template(value))


@many
@given(st.dictionaries(st.sampled_from(["SANDBOXER_TUNNEL_VIA", "SANDBOXER_TUNNEL_ALIAS",
                                        "SANDBOXER_TUNNEL_LOCAL_PORT",
                                        "SANDBOXER_TUNNEL_IDENTITY",
                                        "SANDBOXER_TUNNEL_PORT_RANGE"]), anything))
def test_tunnel_environment(env: dict[str, str]) -> None:
    profile = Profile(id="profile.p", extension="ext.fake")
    value_or((InvalidInput,), lambda: resolve_tunnel(profile.reachability, env))


@many
@given(st.dictionaries(st.sampled_from(["id", "extends", "extension", "actor", "route", "ttl",
                                        "labels", "reachability", "setup", "colour"]),
                       values, max_size=6))
def test_profiles(doc: dict[str, Any]) -> None:
    value_or((ValidationError,), lambda: Profile.model_validate(doc))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(anything, st.text(st.sampled_from(list("[]{}:- \n'\"&*!|>#%@`id")),
                                   max_size=40)))
def test_profile_files(tmp_path: Path, text: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    catalog = Catalog(Settings(home=tmp_path), include_builtin=False)
    src = value_or((InvalidInput,), lambda: catalog.add_file(path))
    if src is not None:
        value_or((InvalidInput,), lambda: catalog.get(src.id))


@many
@given(st.fixed_dictionaries({}, optional={
    "profile": anything, "ttl": anything, "actor": anything, "name": anything,
    "target": anything, "labels": st.dictionaries(anything, anything, max_size=2)}))
def test_api_create_bodies(body: dict[str, Any]) -> None:
    value_or((ValidationError,), lambda: CreateRequest.model_validate(body))


@many
@given(anything, anything)
def test_targets(name: str, url: str) -> None:
    value_or((ValidationError,), lambda: TargetConfig(name=name, url=url))


@many
@given(st.sampled_from([envvars.local_capacity, envvars.local_idle_exit,
                        envvars.local_uid_base, envvars.events_retention,
                        envvars.api_max_body, envvars.mcp_log_level]),
       st.sampled_from(["SANDBOXER_LOCAL_CAPACITY", "SANDBOXER_LOCAL_IDLE_EXIT",
                        "SANDBOXER_LOCAL_UID_BASE", "SANDBOXER_EVENTS_RETENTION",
                        "SANDBOXER_API_MAX_BODY", "SANDBOXER_MCP_LOG_LEVEL"]), anything)
def test_environment_readers(read: Callable[[dict[str, str]], Any], name: str,
                             raw: str) -> None:
    value_or((InvalidInput,), lambda: read({name: raw}))
    value_or((InvalidInput,), lambda: envvars.server({"SANDBOXER_URL": raw}))
    value_or((InvalidInput,), lambda: envvars.path({"SANDBOXER_HOME": raw}, "SANDBOXER_HOME",
                                                   directory=True))


@many
@given(anything)
def test_cli_numbers(text: str) -> None:
    got = value_or((argparse.ArgumentTypeError,), lambda: _bounded(1, 10_000)(text))
    assert got is None or 1 <= got <= 10_000


@many
@given(st.text(max_size=40))
def test_output_and_openssh_quoting(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable()
    assert table(["h"], [[text]]).isprintable() or "\n" in table(["h"], [[text]])
    quoted = config_value(text, path=True)
    assert "%" not in quoted.replace("%%", "")


@pytest.mark.parametrize("text", ["profile.x\n", "profile.x\r", "profile.x\n\n"])
def test_profile_ids_refuse_a_trailing_newline(text: str) -> None:
    with pytest.raises(ValidationError):
        Profile(id=text, extension="ext.fake")
    with pytest.raises(ValidationError):
        Profile(id="profile.x", extends=text, extension="ext.fake")
    with pytest.raises(ValidationError):
        Profile(id="profile.x", extension="ext.fake\n")


def test_labels_refuse_a_trailing_newline_and_never_echo_the_value() -> None:
    for key, value in (("k\n", "v"), ("k", "v\n"), ("k", "secret-ish;value")):
        with pytest.raises(ValueError, match="label") as caught:
            validate_label(key, value)
        assert "secret-ish" not in str(caught.value)
