"""The manager's pre-provision hook: parse, validate, then resolve ``secret_refs``.

Order (docs/secrets.md): ``parse`` (pure grammar, before placement) → ``check`` (every ref:
through ``warden route`` when SANDBOXER_WARDEN is set, else a KV v2 metadata read for
``bao:`` refs and a presence check for ``env:``/``file:``) → ``read`` (only when every
check passed). Values exist only as ``SecretStr`` in the mapping ``read`` returns, which
the manager hands to ``Extension.provision`` and nowhere else; each value is also
registered with the redaction safety net of this process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import SecretStr

from sandboxer import redaction
from sandboxer.config import Settings
from sandboxer.errors import (
    SecretAccessDenied,
    SecretBackendUnavailable,
    SecretError,
    SecretNotFound,
    SecretRefInvalid,
)
from sandboxer.secrets import refs, warden
from sandboxer.secrets.refs import BaoRef, EnvRef, FileRef, Ref

if TYPE_CHECKING:
    from sandboxer.models.profile import Profile

_CLASSES: dict[str, type[SecretError]] = {
    c.code: c for c in (SecretRefInvalid, SecretNotFound, SecretAccessDenied,
                        SecretBackendUnavailable)
}


class KV(Protocol):
    """What the boundary needs of a KV v2 store (``openbao.OpenBao``; mocked in tests)."""

    def check(self, ref: BaoRef) -> None:
        """Validate ``ref`` without reading its value; raise a SecretError if invalid."""

    def read(self, ref: BaoRef) -> str:
        """The value of ``ref``; raise a SecretError if it cannot be read."""


def backend(settings: Settings) -> KV:
    """The configured KV store (imports hvac only now)."""
    from sandboxer.secrets.openbao import OpenBao

    return OpenBao.from_env(settings.env)


@dataclass(frozen=True)
class RefCheck:
    """The outcome of validating one ref: ok, or why not. Never a value."""

    name: str
    ref: str
    via: str  # warden, openbao, env, file
    ok: bool
    code: str | None = None
    reason: str | None = None

    def document(self) -> dict[str, Any]:
        return {"name": self.name, "ref": self.ref, "status": "ok" if self.ok else "error",
                "checked_by": self.via, "code": self.code, "reason": self.reason}


def parse(profile: Profile, settings: Settings) -> list[Ref]:
    """Every ref of ``profile``, parsed; SecretRefInvalid names each bad entry."""
    entries = [(r.name, r.ref) for r in profile.setup.secret_refs]
    return refs.parse(profile.id, entries, settings.env, plain_env=list(profile.setup.env))


class _LazyKV:
    """Builds the KV client on first use, so env:/file: refs never import hvac."""

    def __init__(self, settings: Settings, kv: KV | None) -> None:
        self.settings = settings
        self._kv = kv

    def get(self) -> KV:
        if self._kv is None:
            self._kv = backend(self.settings)
        return self._kv


def _check_local(ref: EnvRef | FileRef, env: dict[str, str]) -> None:
    if isinstance(ref, EnvRef):
        if ref.var not in env:
            raise SecretNotFound(f"{ref.text}: {ref.var} is not set in sand-boxer's "
                                 "environment")
        return
    if not os.path.isfile(ref.path):
        raise SecretNotFound(f"{ref.text}: no such file")
    if not os.access(ref.path, os.R_OK):
        raise SecretAccessDenied(f"{ref.text}: the file is not readable by sand-boxer")


def check(found: Sequence[Ref], settings: Settings, *, kv: KV | None = None) -> list[RefCheck]:
    """Validate every ref (no value is read); one result per ref, in order."""
    env = settings.env
    lazy = _LazyKV(settings, kv)
    results: list[RefCheck] = []
    try:
        exe = warden.binary(env)
        seconds = warden.timeout(env)
    except SecretError as e:  # a misconfigured warden fails every ref the same way
        return [RefCheck(r.name, r.text, "warden", False, e.code, e.render()) for r in found]
    for ref in found:
        via = "warden" if exe else ("openbao" if isinstance(ref, BaoRef) else ref.scheme)
        try:
            if exe:
                warden.route(exe, ref.text, env=env, seconds=seconds)
            if isinstance(ref, BaoRef):
                if not exe:
                    lazy.get().check(ref)
            else:
                _check_local(ref, env)
        except SecretError as e:
            results.append(RefCheck(ref.name, ref.text, via, False, e.code, e.render()))
            continue
        results.append(RefCheck(ref.name, ref.text, via, True))
    return results


def ensure_valid(profile_id: str, checks: Sequence[RefCheck]) -> None:
    """Raise (exit 7) when any ref failed validation, naming every failed ref."""
    failed = [c for c in checks if not c.ok]
    if not failed:
        return
    cls = _CLASSES.get(failed[0].code or "", SecretError)
    detail = "; ".join(f"{c.name}: {c.reason}" for c in failed)
    raise cls(
        f"profile {profile_id}: {len(failed)} of {len(checks)} secret ref(s) did not "
        f"validate: {detail}",
        hint=f"nothing was created; `sandboxer create {profile_id} --dry-run` checks each ref",
    )


def _value(ref: Ref, raw: str) -> SecretStr:
    if "\0" in raw:
        raise SecretRefInvalid(f"{ref.text}: the value holds a NUL byte, which an "
                               "environment variable cannot carry")
    if len(raw.encode()) > refs.MAX_VALUE_BYTES:
        raise SecretRefInvalid(f"{ref.text}: the value is larger than "
                               f"{refs.MAX_VALUE_BYTES // 1024} KiB")
    return SecretStr(raw)


def _read_file(ref: FileRef) -> str:
    try:
        with open(ref.path, "rb") as f:
            data = f.read(refs.MAX_VALUE_BYTES + 2)
    except FileNotFoundError as e:
        raise SecretNotFound(f"{ref.text}: no such file") from e
    except OSError as e:
        raise SecretAccessDenied(f"{ref.text}: cannot read the file ({e.strerror})") from e
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        raise SecretRefInvalid(f"{ref.text}: the file is not UTF-8 text") from e
    # `echo TOKEN > file` adds one newline that is not part of the secret.
    return text.removesuffix("\n").removesuffix("\r")


def read(found: Sequence[Ref], settings: Settings, *, kv: KV | None = None
         ) -> dict[str, SecretStr]:
    """Resolve every ref into memory. Call only after ``check`` passed for all of them."""
    redaction.install()
    lazy = _LazyKV(settings, kv)
    out: dict[str, SecretStr] = {}
    for ref in found:
        if isinstance(ref, BaoRef):
            raw = lazy.get().read(ref)
        elif isinstance(ref, EnvRef):
            if ref.var not in settings.env:
                raise SecretNotFound(f"{ref.text}: {ref.var} is not set")
            raw = settings.env[ref.var]
        else:
            raw = _read_file(ref)
        value = _value(ref, raw)
        # Registered for this process's life: a late log line or error still fails closed.
        redaction.register([raw])
        out[ref.name] = value
    return out


def resolve(profile: Profile, settings: Settings, *, kv: KV | None = None
            ) -> dict[str, SecretStr]:
    """Parse, validate and resolve every ref of ``profile`` (raises SecretError, exit 7)."""
    found = parse(profile, settings)
    if not found:
        return {}
    ensure_valid(profile.id, check(found, settings, kv=kv))
    return read(found, settings, kv=kv)


def redact(text: str, secrets: dict[str, SecretStr]) -> str:
    """Replace every resolved value in ``text`` with ``***`` (the safety net)."""
    return redaction.redact(text, (v.get_secret_value() for v in secrets.values()))
