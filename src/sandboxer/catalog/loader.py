"""Load, merge and validate profiles.

Sources, lowest precedence first: the profiles shipped in this package, then
``~/.config/sandboxer/profiles/``, then each directory of ``SANDBOXER_PROFILES`` in order.
A later source overrides an earlier one by id. Every error names the file, the key path
and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sandboxer.config import Settings
from sandboxer.errors import ProfileInvalid, ProfileNotFound
from sandboxer.models.profile import Profile

BUILTIN_DIR = Path(__file__).parent / "profiles"


@dataclass(frozen=True)
class Source:
    """One profile document as read from disk, before ``extends`` is applied."""

    id: str
    path: Path
    raw: dict[str, Any]


def deep_merge(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Merge ``child`` over ``parent``: mappings merge recursively, anything else replaces."""
    out = dict(parent)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ProfileInvalid(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise ProfileInvalid(f"{path}: cannot read: {e.strerror}") from e
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        doc = yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ProfileInvalid(f"{path}:{where}: invalid YAML: {problem}") from e
    if not isinstance(doc, dict):
        raise ProfileInvalid(
            f"{path}: expected a mapping with at least `id` at the top level, "
            f"got {type(doc).__name__}"
        )
    if not isinstance(doc.get("id"), str):
        raise ProfileInvalid(f"{path}: id: expected a profile id like profile.name")
    return doc


def _has_path(doc: Any, loc: tuple[Any, ...]) -> bool:
    for part in loc:
        in_dict = isinstance(doc, dict) and part in doc
        in_list = isinstance(doc, list) and isinstance(part, int) and part < len(doc)
        if not (in_dict or in_list):
            return False
        doc = doc[part]
    return True


def fingerprint(settings: Settings, *, include_builtin: bool = True) -> tuple[Any, ...]:
    """What a Catalog is read from: every profile file's path, inode, size and mtime.

    Equal fingerprints mean an equal catalog, so a long-lived process (the local service,
    ``sandboxer serve``) keeps its parsed catalog until a file is added, removed or edited.
    """
    import os

    dirs = ([BUILTIN_DIR] if include_builtin else []) + list(settings.profile_dirs)
    seen: list[Any] = []
    for d in dirs:
        try:
            with os.scandir(d) as entries:
                for e in entries:
                    if e.name.endswith((".yaml", ".yml")):
                        st = e.stat()
                        seen.append((e.path, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            seen.append((str(d), None))
    return tuple(sorted(seen, key=repr))


class Catalog:
    """Every profile visible to this process, indexed by id."""

    def __init__(self, settings: Settings, *, include_builtin: bool = True) -> None:
        self.settings = settings
        self._sources: dict[str, Source] = {}
        # A broken file in a profile directory (or a compose file kept beside the profiles)
        # must not take every other profile down with it: it is reported when it matters.
        self.broken: dict[Path, ProfileInvalid] = {}
        dirs = ([BUILTIN_DIR] if include_builtin else []) + list(settings.profile_dirs)
        for d in dirs:
            if d.is_dir():
                for path in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
                    try:
                        self.add_file(path)
                    except ProfileInvalid as e:
                        self.broken[path] = e

    def add_file(self, path: Path) -> Source:
        """Read one profile file; it overrides any earlier profile with the same id."""
        raw = _load_yaml(path)
        src = Source(id=raw["id"], path=path.absolute(), raw=raw)
        self._sources[src.id] = src
        return src

    def ids(self) -> list[str]:
        return sorted(self._sources)

    def source(self, profile_id: str) -> Source:
        try:
            return self._sources[profile_id]
        except KeyError:
            unreadable = "".join(f"; {e.message}" for e in self.broken.values())
            raise ProfileNotFound(
                f"unknown profile {profile_id!r}",
                hint=f"known profiles: {', '.join(self.ids()) or 'none'} "
                f"(see `sandboxer profiles list`){unreadable and '. Files not loaded'}"
                f"{unreadable}",
            ) from None

    def _chain(self, profile_id: str) -> list[Source]:
        """The profile and its ancestors, child first; refuses cycles."""
        chain: list[Source] = []
        seen: list[str] = []
        current: str | None = profile_id
        while current is not None:
            if current in seen:
                loop = " -> ".join([*seen, current])
                raise ProfileInvalid(
                    f"{chain[0].path}: extends: cycle {loop}",
                    hint="a profile may not extend itself, directly or through its parents",
                )
            seen.append(current)
            if chain and current not in self._sources:
                raise ProfileInvalid(
                    f"{chain[-1].path}: extends: unknown parent profile {current!r}; "
                    f"expected one of {', '.join(self.ids())}"
                )
            src = self.source(current)
            chain.append(src)
            parent = src.raw.get("extends")
            if parent is not None and not isinstance(parent, str):
                raise ProfileInvalid(f"{src.path}: extends: expected a profile id or null")
            current = parent
        return chain

    def get(self, profile_id: str) -> Profile:
        """The merged, validated profile."""
        from pydantic import ValidationError

        chain = self._chain(profile_id)
        merged: dict[str, Any] = {}
        for src in reversed(chain):
            merged = deep_merge(merged, src.raw)
        merged["id"] = profile_id
        merged["extends"] = chain[0].raw.get("extends")
        try:
            return Profile.model_validate(merged)
        except ValidationError as e:
            lines = []
            for err in e.errors():
                loc = tuple(err["loc"])
                origin = next((s.path for s in chain if _has_path(s.raw, loc)), chain[0].path)
                key = ".".join(str(p) for p in loc) or "(top level)"
                msg = err["msg"]
                if err["type"] == "extra_forbidden":
                    msg = "unknown key; expected one of the keys in docs/architecture.md#profiles"
                elif err["type"] == "missing":
                    msg = "required key is missing"
                lines.append(f"{origin}: {key}: {msg}")
            raise ProfileInvalid(
                f"profile {profile_id} is invalid: " + "; ".join(lines),
                hint="fix the file and check it with `sandboxer profiles validate FILE`",
            ) from e

    def validate_files(self, paths: list[Path]) -> list[Profile]:
        """Check files (with their ``extends`` against this catalog); creates nothing."""
        profiles = []
        for path in paths:
            src = self.add_file(path)
            profiles.append(self.get(src.id))
        return profiles
