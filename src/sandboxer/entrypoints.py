"""Installed entry points, read without ``importlib.metadata``.

``importlib.metadata`` costs ~14 ms to import and ~8 ms for its first scan of every
installed distribution (a few ms for each later one); a look here reads each
``entry_points.txt`` directly (~2 ms), so the CLI's thin paths and a first create's keeper
pay for neither. ``site`` is loaded first where this process deferred it
(``sandboxer/sitehook.py``): plugins' metadata lies in site-packages. Standard library only.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

# importlib.metadata.EntryPoint.pattern: ``module:attr.attr [extra, ...]``
_VALUE = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")


def registered(group: str) -> dict[str, str]:
    """``name -> "module:attr"`` of the entry points in ``group`` of every distribution on
    ``sys.path`` (the first wins, as for ``importlib.metadata``).

    Reads each ``*.dist-info``/``*.egg-info`` ``entry_points.txt`` directly: importing and
    running ``importlib.metadata`` costs the CLI tens of milliseconds, this a few.
    """
    from sandboxer.sitehook import ensure_site

    ensure_site()  # under cli/launch.py's command: site-packages is on sys.path only now
    header = f"[{group}]"
    found: dict[str, str] = {}
    seen: set[str] = set()  # distributions: the first copy along sys.path shadows the rest
    for entry in sys.path:
        base = entry or "."
        try:
            names = sorted(os.listdir(base))
        except OSError:
            continue
        for name in names:
            if not name.endswith((".dist-info", ".egg-info")):
                continue
            dist = _normalized(name.rpartition(".")[0].partition("-")[0])
            if dist in seen:
                continue
            seen.add(dist)
            try:
                with open(os.path.join(base, name, "entry_points.txt"),
                          encoding="utf-8") as f:
                    text = f.read()
            except (OSError, ValueError):  # none, or not text: this one registers nothing
                continue
            if header in text:
                for key, value in _section(text, header):
                    found.setdefault(key, value)
    return found


def _normalized(name: str) -> str:
    """A distribution's name as importlib.metadata compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _section(text: str, header: str) -> list[tuple[str, str]]:
    """The ``name = value`` lines of one ``[section]`` of an entry_points.txt."""
    inside = False
    out: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            inside = line == header
        elif inside and "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            out.append((key.strip(), value.strip()))
    return out


def find(group: str, name: str) -> Any:
    """The object ``name`` registered in ``group``, imported now; None when nothing is
    registered under that name or it fails to load (for optional objects: a broken one
    only costs the path that does without it)."""
    value = registered(group).get(name)
    if value is None:
        return None
    try:
        return load(value)
    except Exception:
        return None


def load(value: str) -> Any:
    """The object an entry point's ``value`` names (``module:attr``), imported now; any
    error its import raises, or ValueError when ``value`` names nothing."""
    import importlib

    found = _VALUE.match(value)
    if found is None:
        raise ValueError(f"not an entry point: {value!r}")
    obj: Any = importlib.import_module(found.group("module"))
    for part in (found.group("attr") or "").split("."):
        if part:
            obj = getattr(obj, part)
    return obj
