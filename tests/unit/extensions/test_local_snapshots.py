"""ext.local snapshot files: sparse copies and the layout-independent content hash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxer.errors import InvalidInput
from sandboxer.extensions.local import snapshots

MIB = 1 << 20


def sparse(path: Path, size: int, chunks: dict[int, bytes]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in chunks.items():
            f.seek(offset)
            f.write(data)
    return path


def test_a_sparse_copy_keeps_content_and_holes(tmp_path: Path) -> None:
    src = sparse(tmp_path / "a.img", 64 * MIB, {0: b"head", 40 * MIB + 5: os.urandom(3000)})
    dst = tmp_path / "b.img"
    how = snapshots.copy_image(src, dst)
    assert how in ("reflink", "sparse")
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_mode & 0o777 == 0o600
    assert dst.stat().st_blocks * 512 < 4 * MIB  # holes stay holes
    assert snapshots.content_hash(dst) == snapshots.content_hash(src)


def test_the_hash_ignores_the_layout_of_holes(tmp_path: Path) -> None:
    holes = sparse(tmp_path / "h.img", 3 * MIB + 17, {MIB + 9: b"x"})
    dense = tmp_path / "d.img"
    dense.write_bytes(holes.read_bytes())  # the same bytes, zeros written out
    assert snapshots.content_hash(holes) == snapshots.content_hash(dense)
    assert snapshots.content_hash(holes).startswith("sha256:")
    other = sparse(tmp_path / "o.img", 3 * MIB + 17, {MIB + 9: b"y"})
    assert snapshots.content_hash(other) != snapshots.content_hash(holes)
    longer = sparse(tmp_path / "l.img", 3 * MIB + 18, {MIB + 9: b"x"})
    assert snapshots.content_hash(longer) != snapshots.content_hash(holes)


def test_a_failed_copy_leaves_nothing(tmp_path: Path) -> None:
    existing = tmp_path / "taken"
    existing.write_bytes(b"")
    with pytest.raises(FileExistsError):
        snapshots.copy_image(sparse(tmp_path / "a", MIB, {}), existing)
    with pytest.raises(FileNotFoundError):
        snapshots.copy_image(tmp_path / "missing", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_snapshot_paths_come_from_checked_ids(tmp_path: Path) -> None:
    from sandboxer.config import Settings

    s = Settings.from_env({"SANDBOXER_HOME": str(tmp_path), "SANDBOXER_LOCAL_ROOT":
                           str(tmp_path / "root")})
    assert snapshots.snapshot_dir(s, "snap-abcdefgh23") == \
        tmp_path / "root" / ".snapshots" / "snap-abcdefgh23"
    for bad in ("../x", "snap-ABCDEFGH23", "snap-abcdefgh23/..", ""):
        with pytest.raises(InvalidInput):
            snapshots.snapshot_dir(s, bad)


def test_remap_owner_hands_over_only_the_old_uid(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    ws = tmp_path / "ws"
    (ws / "d").mkdir(parents=True)
    (ws / "d" / "f").write_text("x")
    (ws / "keep").write_text("y")
    (ws / "link").symlink_to("/etc/passwd")
    for p in (ws, ws / "d", ws / "d" / "f"):
        os.chown(p, 4242, 4242)
    os.lchown(ws / "link", 4242, 4242)
    snapshots.remap_owner(ws, 4242, 4343)
    assert {p.name: (p.lstat().st_uid, p.lstat().st_gid) for p in
            (ws, ws / "d", ws / "d" / "f", ws / "keep", ws / "link")} == {
        "ws": (4343, 4343), "d": (4343, 4343), "f": (4343, 4343), "keep": (0, 0),
        "link": (4343, 4343)}
    assert Path("/etc/passwd").stat().st_uid == 0  # the link was not followed
