"""Validating refs through warden: ``$SANDBOXER_WARDEN route <ref>``.

warden is the policy authority that knows which refs an actor may have routed to a
sandbox. sand-boxer runs it with an argument array (never a shell), no standard input and
a timeout (``SANDBOXER_WARDEN_TIMEOUT``, default 10 s). Exit status 0 means the ref routes;
anything else means it does not, and the last line warden printed is the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping

from sandboxer.errors import SecretAccessDenied, SecretBackendUnavailable

DEFAULT_TIMEOUT = 10.0
_REASON_MAX = 200


def binary(env: Mapping[str, str]) -> str | None:
    """The warden executable named by SANDBOXER_WARDEN (a path or a name on PATH), if set."""
    name = env.get("SANDBOXER_WARDEN")
    if not name:
        return None
    found = shutil.which(name, path=env.get("PATH", os.defpath))
    if found is None:
        raise SecretBackendUnavailable(
            f"SANDBOXER_WARDEN={name}: no such executable",
            hint="point SANDBOXER_WARDEN at the warden binary, or unset it to validate "
            "bao: refs by a metadata read",
        )
    return found


def timeout(env: Mapping[str, str]) -> float:
    from sandboxer import envvars

    return envvars.warden_timeout(env)


def _reason(out: bytes, err: bytes) -> str:
    for stream in (err, out):
        lines = [ln.strip() for ln in stream.decode("utf-8", "replace").splitlines()]
        lines = [ln for ln in lines if ln]
        if lines:
            text = "".join(c if c.isprintable() else "?" for c in lines[-1])
            return text[:_REASON_MAX]
    return "no reason given"


def route(exe: str, ref: str, *, env: Mapping[str, str], seconds: float) -> None:
    """Return when warden routes ``ref``; raise SecretAccessDenied (refused) or
    SecretBackendUnavailable (warden could not be asked)."""
    try:
        done = subprocess.run([exe, "route", ref], capture_output=True, timeout=seconds,
                              stdin=subprocess.DEVNULL, env=dict(env), check=False)
    except subprocess.TimeoutExpired as e:
        raise SecretBackendUnavailable(
            f"{ref}: `warden route` gave no answer within {seconds:g}s",
            hint="raise SANDBOXER_WARDEN_TIMEOUT or check warden") from e
    except OSError as e:
        raise SecretBackendUnavailable(f"{ref}: cannot run {exe}: {e.strerror}") from e
    if done.returncode != 0:
        raise SecretAccessDenied(
            f"{ref}: warden does not route it (exit {done.returncode}: "
            f"{_reason(done.stdout, done.stderr)})",
            hint="ask warden's operator to route this ref for the actor, or fix the ref",
        )
