"""HttpClient: the Python SDK — the same interface as LocalClient, over `sandboxer serve`.

    from sandboxer.client.http import HttpClient
    with HttpClient("http://127.0.0.1:8765", token) as sbx:
        box = sbx.create("profile.local", ttl="1h")
        print(box.reachability.ssh_command)

Errors come back as the same ``SandboxerError`` subclasses the server raised (rebuilt from
the stable ``code`` of its ``sandboxer.error/v1`` document), so callers handle local and
remote sand-boxer alike. Typed methods return the same pydantic models; ``*_document``
methods return the wire documents.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sandboxer.client._reads import TypedReads
from sandboxer.client.http_snapshots import SnapshotCalls
from sandboxer.config import Settings
from sandboxer.errors import InvalidInput, SandboxerError, UsageError, from_code

if TYPE_CHECKING:
    import httpx

    from sandboxer.models.doctor import Check
    from sandboxer.models.profile import Profile
    from sandboxer.models.reachability import Reachability
    from sandboxer.models.sandbox import SandboxStatus

READ_TIMEOUT = 60.0
CREATE_TIMEOUT = 1800.0  # a create returns only once the sandbox is ready or failed
BUILD_TIMEOUT = 3600.0
_FILE_NAME = re.compile(r"[A-Za-z0-9._-]+\.ya?ml")
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # the build route's {name}


class HttpClient(TypedReads, SnapshotCalls):
    """The Client that talks to a sand-boxer server as the actor of ``token``."""

    def __init__(self, url: str, token: str | None = None, *, settings: Settings | None = None,
                 progress: Callable[[str], None] | None = None,
                 transport: httpx.BaseTransport | None = None,
                 verify: bool | str = True) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.settings = settings or Settings.from_env()  # local paths: known_hosts for ssh
        self.progress = progress
        headers = {"User-Agent": "sand-boxer-sdk"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=READ_TIMEOUT,
                                  transport=transport, verify=verify, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _call(self, method: str, path: str, *, timeout: float | None = None,
              **kwargs: Any) -> Any:
        import httpx

        try:
            reply = self._http.request(method, path, timeout=timeout or READ_TIMEOUT,
                                       **kwargs)
        except httpx.TimeoutException as e:
            raise SandboxerError(f"sand-boxer at {self.url} did not answer {method} {path} "
                                 "in time", hint="the server may be overloaded; retry") from e
        except httpx.HTTPError as e:
            raise SandboxerError(f"cannot reach sand-boxer at {self.url}: {e}",
                                 hint="is `sandboxer serve` running there? "
                                 "check SANDBOXER_URL") from e
        try:
            body = reply.json()
        except ValueError:
            body = None
        if reply.is_success and body is not None:
            return body
        if isinstance(body, dict) and body.get("schema") == "sandboxer.error/v1":
            raise from_code(str(body.get("code")), str(body.get("message")))
        raise SandboxerError(f"{method} {self.url}{path} answered HTTP {reply.status_code} "
                             "without a sand-boxer error document",
                             hint="is SANDBOXER_URL a sand-boxer server?")

    def whoami(self) -> dict[str, Any]:
        """The actor (and admin flag) of this client's token."""
        doc: dict[str, Any] = self._call("GET", "/v1/whoami")
        return doc

    # -- profiles ---------------------------------------------------------------------

    def list_profiles(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._call("GET", "/v1/profiles")["items"]
        return items

    def get_profile(self, profile_id: str) -> Profile:
        from sandboxer.models.profile import Profile

        doc = self._call("GET", f"/v1/profiles/{profile_id}")
        doc.pop("schema", None)
        return Profile.model_validate(doc)

    def validate_profiles(self, paths: list[Path]) -> list[dict[str, Any]]:
        files, names = [], {}
        for i, path in enumerate(paths):
            name = path.name if _FILE_NAME.fullmatch(path.name) else f"profile-{i}.yaml"
            names[name] = str(path)
            files.append({"name": name, "content": path.read_text(encoding="utf-8")})
        results: list[dict[str, Any]] = self._call(
            "POST", "/v1/profiles/validate", json={"files": files})["results"]
        from sandboxer.values import rename_files

        return rename_files(results, names)

    # -- sandboxes --------------------------------------------------------------------

    @staticmethod
    def _create_body(profile_id: str, **options: Any) -> dict[str, Any]:
        body = {"profile": profile_id}
        body.update({k: v for k, v in options.items() if v not in (None, {})})
        return body

    def plan(self, profile_id: str, *, ttl: str | None = None, actor: str | None = None,
             labels: dict[str, str] | None = None,
             target: str | None = None) -> dict[str, Any]:
        body = self._create_body(profile_id, ttl=ttl, actor=actor, labels=labels,
                                 target=target)
        doc: dict[str, Any] = self._call("POST", "/v1/sandboxes",
                                         json={**body, "dry_run": True})
        return doc

    def create(self, profile_id: str, *, ttl: str | None = None, actor: str | None = None,
               labels: dict[str, str] | None = None, target: str | None = None,
               name: str | None = None, from_snapshot: str | None = None) -> SandboxStatus:
        from sandboxer.models.sandbox import SandboxStatus

        return SandboxStatus.model_validate(self.create_document(
            profile_id, ttl=ttl, actor=actor, labels=labels, target=target, name=name,
            from_snapshot=from_snapshot))

    def create_document(self, profile_id: str, *, ttl: str | None = None,
                        actor: str | None = None, labels: dict[str, str] | None = None,
                        target: str | None = None, name: str | None = None,
                        from_snapshot: str | None = None) -> dict[str, Any]:
        if self.progress:
            self.progress(f"creating from {profile_id} on {self.url}")
        body = self._create_body(profile_id, ttl=ttl, actor=actor, labels=labels,
                                 target=target, name=name, from_snapshot=from_snapshot)
        doc: dict[str, Any] = self._call("POST", "/v1/sandboxes", timeout=CREATE_TIMEOUT,
                                         json=body)
        return doc

    def get_document(self, sandbox_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = self._call("GET", f"/v1/sandboxes/{_seg(sandbox_id)}")
        return doc

    def list_documents(self, *, states: list[str] | None = None, profile: str | None = None,
                       actor: str | None = None, labels: dict[str, str] | None = None,
                       all: bool = False) -> list[dict[str, Any]]:
        params: list[tuple[str, str]] = [("state", s) for s in states or []]
        for key, value in (("profile", profile), ("actor", actor)):
            if value is not None:
                params.append((key, value))
        params += [("label", f"{k}={v}") for k, v in (labels or {}).items()]
        if all:
            params.append(("all", "true"))
        items: list[dict[str, Any]] = self._call("GET", "/v1/sandboxes",
                                                 params=params)["items"]
        return items

    def extend(self, sandbox_id: str, ttl: str) -> SandboxStatus:
        from sandboxer.models.sandbox import SandboxStatus

        return SandboxStatus.model_validate(self._call(
            "POST", f"/v1/sandboxes/{_seg(sandbox_id)}/extend", json={"ttl": ttl}))

    def destroy(self, sandbox_id: str) -> SandboxStatus:
        from sandboxer.models.sandbox import SandboxStatus

        return SandboxStatus.model_validate(self.destroy_document(sandbox_id))

    def destroy_document(self, sandbox_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = self._call("DELETE", f"/v1/sandboxes/{_seg(sandbox_id)}",
                                         timeout=CREATE_TIMEOUT)
        return doc

    def stop(self, sandbox_id: str) -> SandboxStatus:
        """``POST /v1/sandboxes/{id}/stop``."""
        return self._lifecycle("stop", sandbox_id)

    def start(self, sandbox_id: str) -> SandboxStatus:
        """``POST /v1/sandboxes/{id}/start``."""
        return self._lifecycle("start", sandbox_id)

    def pause(self, sandbox_id: str) -> SandboxStatus:
        """``POST /v1/sandboxes/{id}/pause``."""
        return self._lifecycle("pause", sandbox_id)

    def resume(self, sandbox_id: str) -> SandboxStatus:
        """``POST /v1/sandboxes/{id}/resume``."""
        return self._lifecycle("resume", sandbox_id)

    def _lifecycle(self, op: str, sandbox_id: str) -> SandboxStatus:
        from sandboxer.models.sandbox import SandboxStatus

        if self.progress:
            self.progress(f"{sandbox_id}: {op} on {self.url}")
        return SandboxStatus.model_validate(self._call(
            "POST", f"/v1/sandboxes/{_seg(sandbox_id)}/{op}", timeout=CREATE_TIMEOUT))

    def reap(self) -> list[SandboxStatus]:
        from sandboxer.models.sandbox import SandboxStatus

        items = self._call("POST", "/v1/reap", timeout=CREATE_TIMEOUT)["items"]
        return [SandboxStatus.model_validate(d) for d in items]

    def reconcile(self) -> list[dict[str, Any]]:
        removed: list[dict[str, Any]] = self._call("POST", "/v1/reconcile",
                                                   timeout=CREATE_TIMEOUT)["removed"]
        return removed

    def reachability(self, sandbox_id: str) -> Reachability:
        from sandboxer.models.reachability import Reachability

        return Reachability.model_validate(
            self._call("GET", f"/v1/sandboxes/{_seg(sandbox_id)}/reachability"))

    def identity(self, sandbox_id: str) -> str:
        """``GET /v1/sandboxes/{id}/identity``: the sandbox's private key (keep it 0600)."""
        doc = self._call("GET", f"/v1/sandboxes/{_seg(sandbox_id)}/identity")
        return str(doc["private_key"])

    def event_documents(self, *, after: int = 0, sandbox_id: str | None = None,
                        limit: int = 1000) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"after": after, "limit": limit}
        if sandbox_id is not None:
            params["sandbox"] = sandbox_id
        items: list[dict[str, Any]] = self._call("GET", "/v1/events", params=params)["items"]
        return items

    # -- targets and images -----------------------------------------------------------

    def pools_list(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._call("GET", "/v1/pools")["items"]
        return items

    def pools_show(self, profile_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = self._call("GET", f"/v1/pools/{profile_id}")
        return doc

    def targets_list(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._call("GET", "/v1/targets")["items"]
        return items

    def targets_add(self, *, name: str, url: str, identity: str | None = None,
                    public_host: str | None = None, capacity: int | None = None,
                    kind: str = "self-hosted", allow: list[str] | None = None,
                    fingerprint: str | None = None, extension: str | None = None,
                    confirm: Callable[[str], bool] | None = None,
                    labels: dict[str, str] | None = None) -> dict[str, Any]:
        """The server connects and pins the key; without ``fingerprint`` the key it sees
        is accepted only if ``confirm`` agrees up front (the CLI's --yes)."""
        accept = fingerprint is None and confirm is not None and bool(
            confirm("not known yet: the server pins the key it sees at first contact"))
        fields = {"name": name, "url": url, "identity": identity, "public_host": public_host,
                  "capacity": capacity, "kind": kind, "allow": allow, "extension": extension,
                  "labels": labels}
        body: dict[str, Any] = {k: v for k, v in fields.items() if v not in (None, [], {})}
        body.update(host_key_fingerprint=fingerprint, accept_new_host_key=accept)
        if identity is not None and not Path(identity).is_absolute():
            raise UsageError(f"--identity {identity}: the server at {self.url} reads the key "
                             "on its own machine, where this relative path means nothing",
                             hint="give the key's absolute path on the server's machine")
        try:
            doc: dict[str, Any] = self._call("POST", "/v1/targets", json=body)
        except InvalidInput as e:
            if identity is None or identity not in e.message:
                raise
            raise type(e)(e.message, hint=f"SANDBOXER_URL is set: --identity names a file on "
                          f"the server's machine ({self.url}), readable by the user that runs "
                          "`sandboxer serve` there, not a file of this machine") from e
        doc.pop("schema", None)
        return doc

    def targets_check(self, name: str | None = None) -> list[dict[str, Any]]:
        params = {"name": name} if name else {}
        items: list[dict[str, Any]] = self._call(
            "GET", "/v1/targets/check", params=params, timeout=CREATE_TIMEOUT)["items"]
        return items

    def targets_remove(self, name: str) -> None:
        self._call("DELETE", f"/v1/targets/{_seg(name)}")

    def images_build(self, name: str, *, target: str = "local",
                     variables: dict[str, str] | None = None,
                     force: bool = False) -> dict[str, Any]:
        if self.progress:
            self.progress(f"building {name} for {target} on {self.url}")
        body: dict[str, Any] = {"target": target, "variables": variables or {},
                                "force": force}
        if _SEGMENT.fullmatch(name):  # a profile id or a recipe name: one path segment
            path = f"/v1/images/{_seg(name)}/build"
        else:  # a Packer template path: in the body, resolved on the server's machine
            path, body = "/v1/images/build", {"name": name, **body}
        try:
            doc: dict[str, Any] = self._call("POST", path, json=body, timeout=BUILD_TIMEOUT)
        except InvalidInput as e:
            if not Path(name).exists() or name not in e.message:
                raise
            raise type(e)(e.message, hint=f"{name} is a file of this machine, but SANDBOXER_URL "
                          f"is set: the server at {self.url} builds from files on its own "
                          "machine, a template named relative to its SANDBOXER_PACKER_DIR; "
                          "nothing is uploaded") from e
        doc.pop("schema", None)
        return doc

    # -- tokens and the outbox (admin) -------------------------------------------------

    def tokens_add(self, actor: str, *, admin: bool = False) -> tuple[str, dict[str, Any]]:
        """``POST /v1/tokens``: the server's new token (returned only now) and summary."""
        doc: dict[str, Any] = self._call("POST", "/v1/tokens",
                                         json={"actor": actor, "admin": admin})
        token = str(doc.pop("token"))
        doc.pop("schema", None)
        return token, doc

    def tokens_list(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._call("GET", "/v1/tokens")["items"]
        return items

    def tokens_remove(self, token_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = self._call("DELETE", f"/v1/tokens/{_seg(token_id)}")
        doc.pop("schema", None)
        return doc

    def events_publish(self) -> tuple[dict[str, Any], bool]:
        """``POST /v1/events/publish``: one delivery pass on the server's outbox."""
        doc: dict[str, Any] = self._call("POST", "/v1/events/publish",
                                         timeout=CREATE_TIMEOUT)
        skipped = bool(doc.pop("skipped", False))
        return doc, not skipped

    def doctor(self) -> list[Check]:
        """The server's machine (admin): what it lacks to run sandboxes."""
        from sandboxer.models.doctor import Check as Row

        doc = self._call("GET", "/v1/doctor", timeout=BUILD_TIMEOUT)
        return [Row(c["name"], bool(c["ok"]), c["detail"], c.get("fix"))
                for c in doc["checks"]]


if TYPE_CHECKING:  # mypy checks both clients against the one protocol
    from sandboxer.client import Client
    from sandboxer.client.local import LocalClient

    _local: type[Client] = LocalClient
    _http: type[Client] = HttpClient


def _seg(value: str) -> str:
    """One URL path segment: an id with a slash or dot-dot must not reach another route."""
    from urllib.parse import quote

    if value in ("", ".", ".."):
        return value.replace(".", "%2E") or "-"
    return quote(value, safe="")
