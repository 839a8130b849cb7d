"""ext.local owner marks: which home created a sandbox dir on a shared local root."""

from __future__ import annotations

from pathlib import Path

from sandboxer.config import Settings
from sandboxer.extensions.local import control


def settings(tmp_path: Path, home: str) -> Settings:
    return Settings.from_env({"SANDBOXER_HOME": str(tmp_path / home),
                              "SANDBOXER_LOCAL_ROOT": str(tmp_path / "root")})


def test_owner_mark(tmp_path: Path) -> None:
    a, b = settings(tmp_path, "a"), settings(tmp_path, "b")
    d = tmp_path / "root" / "sbx-1"
    d.mkdir(parents=True)
    assert control.owned_by(a, d) is None  # no mark, no record: nothing says
    control.write_owner(a, d)
    assert control.owned_by(a, d) is True
    assert control.owned_by(b, d) is False
    (tmp_path / "a-link").symlink_to(tmp_path / "a")
    assert control.owned_by(settings(tmp_path, "a-link"), d) is True  # the same home
    control.owner_path(d).write_text("not json")
    assert control.owned_by(a, d) is False


def test_dir_from_before_marks_belongs_to_the_home_of_its_keys(tmp_path: Path) -> None:
    a, b = settings(tmp_path, "a"), settings(tmp_path, "b")
    (tmp_path / "root" / "sbx-1").mkdir(parents=True)
    control.write_record(a, "sbx-1", {"host_key_path": str(a.keys_dir / "sbx-1.host")})
    assert control.owned_by(a, tmp_path / "root" / "sbx-1") is True
    assert control.owned_by(b, tmp_path / "root" / "sbx-1") is False
