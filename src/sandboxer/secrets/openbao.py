"""OpenBao (or Vault) KV v2 reads: the only module that imports hvac.

Reached at ``BAO_ADDR`` with ``BAO_TOKEN`` (falling back to ``VAULT_ADDR``/``VAULT_TOKEN``),
TLS verified by default (``BAO_CACERT`` names a CA bundle), one timeout per request
(``SANDBOXER_BAO_TIMEOUT``, default 10 s), no redirects (the token header would follow
them). hvac errors are mapped here, once, to SecretNotFound / SecretAccessDenied /
SecretBackendUnavailable; messages name the ref and the HTTP status, never a value and
never the server's own error text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from typing_extensions import override

from sandboxer.errors import (
    SecretAccessDenied,
    SecretBackendUnavailable,
    SecretNotFound,
    SecretRefInvalid,
)
from sandboxer.secrets.refs import BaoRef

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT = 10.0
T = TypeVar("T")
# hvac raises one class per status and keeps no status code on the exception.
_STATUS = {"RateLimitExceeded": "429", "InternalServerError": "500",
           "VaultNotInitialized": "501", "BadGateway": "502", "VaultDown": "503"}


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for n in names:
        if env.get(n):
            return env[n]
    return None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


class OpenBao:
    """A KV v2 reader for one server and token."""

    def __init__(self, addr: str, token: str, *, verify: bool | str = True,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.addr = addr.rstrip("/")
        self._token = token
        self.verify = verify
        self.timeout = timeout
        self._client: Any = None

    @override
    def __repr__(self) -> str:  # never the token
        return f"OpenBao({self.addr!r})"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OpenBao:
        """Configured from BAO_* (or VAULT_*) variables; says what is missing otherwise."""
        addr = _first(env, "BAO_ADDR", "VAULT_ADDR")
        token = _first(env, "BAO_TOKEN", "VAULT_TOKEN")
        if not addr or not token:
            missing = "BAO_ADDR" if not addr else "BAO_TOKEN"
            raise SecretBackendUnavailable(
                f"OpenBao is not configured: {missing} is not set",
                hint="set BAO_ADDR and BAO_TOKEN (see docs/secrets.md)",
            )
        verify: bool | str = True
        cacert = _first(env, "BAO_CACERT", "VAULT_CACERT")
        if cacert:
            verify = cacert
        if _truthy(_first(env, "BAO_SKIP_VERIFY", "VAULT_SKIP_VERIFY")):
            if env.get("SANDBOXER_ENV") == "production":
                raise SecretBackendUnavailable(
                    "BAO_SKIP_VERIFY is set, but TLS verification cannot be switched off "
                    "when SANDBOXER_ENV=production",
                    hint="give the server's CA in BAO_CACERT instead",
                )
            log.warning("TLS verification of %s is switched off (BAO_SKIP_VERIFY)", addr)
            verify = False
        from sandboxer import envvars

        return cls(addr, token, verify=verify, timeout=envvars.bao_timeout(env))

    def _hvac(self) -> Any:
        if self._client is None:
            import hvac  # ~100 ms with requests: only a create with bao: refs pays it

            self._client = hvac.Client(url=self.addr, token=self._token, verify=self.verify,
                                       timeout=self.timeout, allow_redirects=False)
        return self._client

    def _call(self, ref: BaoRef, what: str, fn: Callable[[Any], T]) -> T:
        """Run one hvac call; map every failure to a SecretError naming ``ref``."""
        import hvac.exceptions as hx
        import requests

        where = f"{ref.text} ({what} of {ref.location} at {self.addr})"
        try:
            return fn(self._hvac().secrets.kv.v2)
        except hx.InvalidPath as e:
            raise SecretNotFound(
                f"{where}: no such secret (HTTP 404)",
                hint=f"write it: bao kv put -mount={ref.mount} {ref.path} {ref.field}=…",
            ) from e
        except (hx.Forbidden, hx.Unauthorized) as e:
            code = 401 if isinstance(e, hx.Unauthorized) else 403
            raise SecretAccessDenied(
                f"{where}: the token may not read it (HTTP {code})",
                hint=f"grant the token's policy `read` on {ref.mount}/data/{ref.path} and "
                f"{ref.mount}/metadata/{ref.path}",
            ) from e
        except hx.InvalidRequest as e:
            raise SecretRefInvalid(
                f"{where}: the server rejected the request (HTTP 400); is {ref.mount} a "
                "KV version 2 mount?") from e
        except hx.VaultError as e:
            status = _STATUS.get(type(e).__name__, "error")
            raise SecretBackendUnavailable(f"{where}: the server answered HTTP {status}",
                                           hint="retry later or check the server") from e
        except requests.exceptions.SSLError as e:
            raise SecretBackendUnavailable(
                f"{where}: TLS verification failed",
                hint="give the server's CA bundle in BAO_CACERT") from e
        except requests.exceptions.Timeout as e:
            raise SecretBackendUnavailable(
                f"{where}: no answer within {self.timeout:g}s",
                hint="raise SANDBOXER_BAO_TIMEOUT or check the server") from e
        except requests.exceptions.RequestException as e:
            raise SecretBackendUnavailable(
                f"{where}: cannot connect ({type(e).__name__})",
                hint="check BAO_ADDR and that the server is up") from e
        except (ValueError, KeyError, TypeError) as e:
            raise SecretBackendUnavailable(
                f"{where}: the answer is not a KV v2 response ({type(e).__name__})") from e

    def check(self, ref: BaoRef) -> None:
        """Validate ``ref`` without reading its value: ``GET /v1/<mount>/metadata/<path>``.

        The secret must exist and its current version must be neither deleted nor destroyed.
        """
        def call(kv: Any) -> Any:
            return kv.read_secret_metadata(path=ref.path, mount_point=ref.mount)

        reply = self._call(ref, "metadata read", call)
        try:
            data = reply["data"]
            current = data.get("current_version")
            version = (data.get("versions") or {}).get(str(current)) or {}
        except (TypeError, AttributeError) as e:
            raise SecretBackendUnavailable(
                f"{ref.text}: the metadata of {ref.location} is not a KV v2 answer") from e
        if version.get("destroyed") or version.get("deletion_time"):
            raise SecretNotFound(
                f"{ref.text}: the current version ({current}) of {ref.location} is deleted",
                hint="write the secret again or undelete that version",
            )

    def read(self, ref: BaoRef) -> str:
        """The field's value: ``GET /v1/<mount>/data/<path>`` (latest version)."""
        def call(kv: Any) -> Any:
            return kv.read_secret_version(path=ref.path, mount_point=ref.mount,
                                          raise_on_deleted_version=True)

        reply = self._call(ref, "read", call)
        try:
            fields = reply["data"]["data"]
        except (TypeError, KeyError) as e:
            raise SecretBackendUnavailable(
                f"{ref.text}: the answer for {ref.location} is not a KV v2 secret") from e
        if not isinstance(fields, dict) or ref.field not in fields:
            names = ", ".join(sorted(fields)[:10]) if isinstance(fields, dict) else ""
            raise SecretNotFound(
                f"{ref.text}: the secret at {ref.location} has no field {ref.field!r}"
                + (f" (its fields: {names})" if names else ""))
        value = fields[ref.field]
        if isinstance(value, str):
            return value
        return json.dumps(value, separators=(",", ":"))
