"""The secret ref grammar: what parses, and errors that name profile, entry and part."""

from __future__ import annotations

import pytest

from sandboxer.errors import SecretRefInvalid
from sandboxer.secrets.refs import BaoRef, EnvRef, FileRef, parse, parse_one


def test_bao_ref_parts() -> None:
    ref = parse_one("TOKEN", "bao:kv/build/hackage#token")
    assert ref == BaoRef(name="TOKEN", text="bao:kv/build/hackage#token", mount="kv",
                         path="build/hackage", field="token")
    assert ref.location == "kv/build/hackage"


def test_env_and_file_refs() -> None:
    assert parse_one("A", "env:MY_VAR") == EnvRef(name="A", text="env:MY_VAR", var="MY_VAR")
    assert parse_one("B", "file:/etc/x/../y") == FileRef(name="B", text="file:/etc/x/../y",
                                                         path="/etc/x/../y")
    home = parse_one("C", "file:~/tok", home="/home/u")
    assert isinstance(home, FileRef)
    assert home.path == "/home/u/tok"


@pytest.mark.parametrize(
    ("ref", "part"),
    [
        ("kv/x#y", "no scheme"),
        ("vault:kv/x#y", "unknown scheme 'vault:'"),
        ("bao:kv/x", "exactly one '#'"),
        ("bao:kv/x#a#b", "exactly one '#'"),
        ("bao:kv/x#", "field after '#' is empty"),
        ("bao:kv#token", "no path after the mount 'kv'"),
        ("bao:/x#token", "mount before the first '/' is empty"),
        ("bao:k v/x#token", "mount 'k v'"),
        ("bao:kv/a//b#token", "empty, '.' or '..' segment"),
        ("bao:kv/a/../b#token", "empty, '.' or '..' segment"),
        ("bao:kv/a b#token", "path segment 'a b'"),
        ("bao:kv/x#to ken", "field 'to ken'"),
        ("env:1BAD", "variable name '1BAD'"),
        ("env:", "variable name ''"),
        ("file:relative/path", "path 'relative/path' is not absolute"),
    ],
)
def test_bad_refs_name_profile_entry_and_part(ref: str, part: str) -> None:
    with pytest.raises(SecretRefInvalid) as info:
        parse("profile.p", [("OK", "env:HOME"), ("TOKEN", ref)], {})
    text = info.value.render()
    assert "profile profile.p" in text
    assert "setup.secret_refs[1] (TOKEN)" in text
    assert part in text
    assert info.value.exit_code == 7
    assert info.value.code == "secret_ref_invalid"


def test_every_bad_entry_is_named_at_once() -> None:
    with pytest.raises(SecretRefInvalid) as info:
        parse("profile.p", [("A", "nope"), ("B", "env:OK"), ("C", "bao:kv#x")], {})
    assert "secret_refs[0] (A)" in info.value.message
    assert "secret_refs[2] (C)" in info.value.message
    assert "secret_refs[1]" not in info.value.message


@pytest.mark.parametrize(
    ("entries", "plain", "part"),
    [
        ([("A", "env:X"), ("A", "env:Y")], [], "declared twice"),
        ([("HOME", "env:X")], [], "reserved"),
        ([("SANDBOXER_ID", "env:X")], [], "reserved"),
        ([("LD_PRELOAD", "env:X")], [], "reserved"),
        ([("TZ", "env:X")], ["TZ"], "also set in setup.env"),
        ([("not-ident", "env:X")], [], "not an identifier"),
    ],
)
def test_names(entries: list[tuple[str, str]], plain: list[str], part: str) -> None:
    with pytest.raises(SecretRefInvalid, match=part):
        parse("profile.p", entries, {}, plain_env=plain)


def test_production_refuses_env_and_file_refs() -> None:
    entries = [("A", "bao:kv/a#b"), ("B", "env:X"), ("C", "file:/x")]
    assert len(parse("profile.p", entries, {"SANDBOXER_ENV": "development"})) == 3
    with pytest.raises(SecretRefInvalid) as info:
        parse("profile.p", entries, {"SANDBOXER_ENV": "production"})
    assert "(B): ref 'env:X': env: refs are for development" in info.value.message
    assert "(C): ref 'file:/x': file: refs" in info.value.message
    assert "(A)" not in info.value.message
