"""Entry points read without importlib.metadata: the same objects, for less."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from sandboxer import entrypoints


def test_a_value_loads_the_object_importlib_metadata_would() -> None:
    for ep in entry_points(group="sandboxer.extensions"):
        assert entrypoints.load(ep.value) is ep.load()
    assert entrypoints.load("os.path:join [extra]") is __import__("os").path.join
    assert entrypoints.load("os") is __import__("os")


@pytest.mark.parametrize("value", ["", "a b:c", "mod:attr extra"])
def test_a_value_that_names_nothing_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="not an entry point"):
        entrypoints.load(value)


def test_the_registry_scans_no_distribution_through_importlib_metadata() -> None:
    # pydantic imports importlib.metadata anyway (and scans for plugins of its own, here
    # turned off); the scans are what cost (~8 ms the first).
    code = ("import importlib.metadata as m\n"
            "def scan(*a, **k):\n"
            "    raise AssertionError('scanned')\n"
            "m.entry_points = m.distributions = scan\n"
            "from sandboxer.extensions import base\n"
            "print(base.available(), base.load('ext.local').name, base.fast_paths('ext.local')"
            " is not None)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, env={**os.environ, "PYDANTIC_DISABLE_PLUGINS": "__all__"})
    assert done.returncode == 0, done.stderr
    names, loaded, fast = done.stdout.rsplit(" ", 2)
    assert "'ext.local'" in names
    assert (loaded, fast) == ("ext.local", "True\n")


def test_a_shadowed_copy_of_a_distribution_registers_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for where, text in ((first, "ext.a = new:A\n"),
                        (second, "ext.a = old:A\next.stale = old:S\n")):
        (where / "foo_bar-1.0.dist-info").mkdir(parents=True)
        (where / "foo_bar-1.0.dist-info" / "entry_points.txt").write_text(
            f"[sandboxer.test]\n{text}")
    (second / "Foo.Bar-0.9.dist-info").mkdir()  # the same name, normalized
    (second / "other-1.dist-info").mkdir()
    (second / "other-1.dist-info" / "entry_points.txt").write_bytes(b"\xff\xfe[bad")
    monkeypatch.syspath_prepend(str(second))
    monkeypatch.syspath_prepend(str(first))
    assert entrypoints.registered("sandboxer.test") == {"ext.a": "new:A"}
