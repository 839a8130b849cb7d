from __future__ import annotations

from pathlib import Path

import pytest

from sandboxer.catalog import Catalog, deep_merge
from sandboxer.config import Settings
from sandboxer.errors import ProfileInvalid, ProfileNotFound


def write(d: Path, name: str, text: str) -> Path:
    p = d / name
    p.write_text(text)
    return p


def test_builtin_profile_local_loads(settings: Settings) -> None:
    p = Catalog(settings).get("profile.local")
    assert p.extension == "ext.local"
    assert p.ttl.default < p.ttl.max


def test_deep_merge_child_wins_and_maps_merge() -> None:
    parent = {"a": 1, "spec": {"x": 1, "y": {"z": 1}}, "list": [1, 2]}
    child = {"spec": {"y": {"w": 2}}, "list": [3]}
    assert deep_merge(parent, child) == {"a": 1, "spec": {"x": 1, "y": {"z": 1, "w": 2}},
                                         "list": [3]}


def test_extends_merges_parent(settings: Settings, profiles_dir: Path) -> None:
    write(profiles_dir, "child.yaml",
          "id: profile.child\nextends: profile.fake\nlabels: {extra: 'yes'}\n"
          "ttl: {default: 30m}\n")
    p = Catalog(settings).get("profile.child")
    assert p.extension == "ext.fake"
    assert p.labels == {"tier": "test", "extra": "yes"}
    assert p.ttl.default.total_seconds() == 1800
    assert p.ttl.max.total_seconds() == 7200  # inherited
    assert p.extends == "profile.fake"


def test_later_directory_overrides_by_id(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profiles_dir: Path
) -> None:
    second = tmp_path / "second"
    second.mkdir()
    write(second, "x.yaml", "id: profile.fake\nextension: ext.fake\ndescription: override\n")
    monkeypatch.setenv("SANDBOXER_PROFILES", f"{profiles_dir}:{second}")
    assert Catalog(Settings.from_env()).get("profile.fake").description == "override"


def test_unknown_key_names_file_and_path(settings: Settings, profiles_dir: Path) -> None:
    f = write(profiles_dir, "bad.yaml",
              "id: profile.bad\nextension: ext.fake\nsetup: {instructons: []}\n")
    with pytest.raises(ProfileInvalid) as e:
        Catalog(settings).get("profile.bad")
    assert str(f) in e.value.message
    assert "setup.instructons" in e.value.message
    assert "unknown key" in e.value.message


def test_error_in_parent_names_parent_file(settings: Settings, profiles_dir: Path) -> None:
    parent = write(profiles_dir, "p.yaml",
                   "id: profile.p\nextension: ext.fake\nttl: {default: soon}\n")
    write(profiles_dir, "c.yaml", "id: profile.c\nextends: profile.p\n")
    with pytest.raises(ProfileInvalid) as e:
        Catalog(settings).get("profile.c")
    assert f"{parent}: ttl.default" in e.value.message
    assert "duration" in e.value.message


def test_extends_cycle_is_refused(settings: Settings, profiles_dir: Path) -> None:
    write(profiles_dir, "a.yaml", "id: profile.a\nextends: profile.b\nextension: ext.fake\n")
    write(profiles_dir, "b.yaml", "id: profile.b\nextends: profile.a\n")
    with pytest.raises(ProfileInvalid, match=r"cycle profile.a -> profile.b -> profile.a"):
        Catalog(settings).get("profile.a")


def test_self_extends_is_a_cycle(settings: Settings, profiles_dir: Path) -> None:
    write(profiles_dir, "s.yaml", "id: profile.s\nextends: profile.s\nextension: ext.fake\n")
    with pytest.raises(ProfileInvalid, match="cycle"):
        Catalog(settings).get("profile.s")


def test_unknown_parent(settings: Settings, profiles_dir: Path) -> None:
    write(profiles_dir, "o.yaml", "id: profile.o\nextends: profile.nope\n")
    with pytest.raises(ProfileInvalid, match=r"unknown parent profile 'profile\.nope'"):
        Catalog(settings).get("profile.o")


def test_unknown_profile_id(settings: Settings) -> None:
    with pytest.raises(ProfileNotFound, match=r"profile\.missing"):
        Catalog(settings).get("profile.missing")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("id: [unclosed\n", "invalid YAML"), ("- a\n- b\n", "expected a mapping"),
     ("description: no id\n", "id: expected a profile id")],
)
def test_bad_files(settings: Settings, tmp_path: Path, text: str, expected: str) -> None:
    f = write(tmp_path, "f.yaml", text)
    with pytest.raises(ProfileInvalid, match=expected) as e:
        Catalog(settings).validate_files([f])
    assert str(f) in e.value.message


def test_non_utf8_file(settings: Settings, tmp_path: Path) -> None:
    f = tmp_path / "latin.yaml"
    f.write_bytes(b"id: profile.x\ndescription: caf\xe9\n")
    with pytest.raises(ProfileInvalid, match="not UTF-8"):
        Catalog(settings).validate_files([f])


def test_a_broken_file_does_not_hide_the_others(settings: Settings, profiles_dir: Path) -> None:
    write(profiles_dir, "zz-broken.yaml", "services: [unclosed\n")
    catalog = Catalog(settings)
    assert catalog.get("profile.fake").extension == "ext.fake"
    assert list(catalog.broken) == [profiles_dir / "zz-broken.yaml"]
    with pytest.raises(ProfileNotFound, match=r"Files not loaded.*zz-broken\.yaml"):
        catalog.get("profile.zz")
