"""One copy of the guest's secrets loader and session wrapper: the package data
ext.compose-ssh installs, and byte-equal checked-in copies the Packer template installs."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from sandboxer.extensions import _guest
from sandboxer.extensions.compose_ssh import secrets as cs

PACKER_GUEST = Path(__file__).resolve().parents[3] / "packer" / "base" / "guest"


@pytest.mark.parametrize("name", _guest.FILES)
def test_packer_copy_is_byte_equal_to_the_package_data(name: str) -> None:
    shipped = Path(str(_guest.files("sandboxer.extensions").joinpath("guest", name)))
    assert (PACKER_GUEST / name).read_bytes() == shipped.read_bytes(), (
        f"packer/base/guest/{name} drifted from src/sandboxer/extensions/guest/{name}: "
        "edit the package copy and copy it over (the image cache key hashes it)")
    assert (PACKER_GUEST / name).stat().st_mode & 0o111 == shipped.stat().st_mode & 0o111


def test_compose_installs_the_same_files_where_the_session_sources_the_loader() -> None:
    with tarfile.open(fileobj=io.BytesIO(cs.loader_tarball())) as tar:
        for path, name in ((_guest.LOADER, "loader.sh"), (_guest.SESSION, "session")):
            member = tar.extractfile(path.lstrip("/"))
            assert member is not None
            assert member.read().decode() == _guest.text(name)
    assert f". {_guest.LOADER}\n" in _guest.text("session")


def test_only_known_guest_files() -> None:
    with pytest.raises(ValueError, match="no guest file"):
        _guest.text("../secrets.py")
