"""One exception root with stable codes, mapped once to CLI exit codes and HTTP statuses."""

from __future__ import annotations

from typing import ClassVar

from sandboxer._typing import override


class SandboxerError(Exception):
    """Root of every error sand-boxer raises on purpose.

    ``code`` is stable (API payloads and docs name it); ``exit_code`` and ``http_status``
    are the single mapping used by the CLI and the HTTP API.
    """

    code: ClassVar[str] = "unexpected"
    exit_code: ClassVar[int] = 1
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    @override
    def __str__(self) -> str:
        return self.render()

    def render(self) -> str:
        """The one-paragraph text shown to a user (resolved secret values become ``***``)."""
        from sandboxer.redaction import redact

        if not self.hint:
            return redact(self.message)
        stop = "" if self.message.endswith((".", ":", "?", "!")) else "."
        return redact(f"{self.message}{stop} {self.hint[0].upper()}{self.hint[1:]}")


class UsageError(SandboxerError):
    code = "usage"
    exit_code = 2
    http_status = 400


class MethodNotAllowed(UsageError):
    """An HTTP route asked with a method it does not take."""

    http_status = 405


class NotFound(SandboxerError):
    code = "not_found"
    exit_code = 3
    http_status = 404


class ProfileNotFound(NotFound):
    code = "profile_not_found"


class SandboxNotFound(NotFound):
    code = "sandbox_not_found"


class SnapshotNotFound(NotFound):
    code = "snapshot_not_found"


class InvalidInput(SandboxerError):
    code = "invalid_input"
    exit_code = 4
    http_status = 422


class ProfileInvalid(InvalidInput):
    code = "profile_invalid"


class ProvisionFailed(SandboxerError):
    code = "provision_failed"
    exit_code = 5
    http_status = 502


class DestroyFailed(ProvisionFailed):
    code = "destroy_failed"


class NoTarget(SandboxerError):
    code = "no_target"
    exit_code = 6
    http_status = 503


class TargetTaken(NoTarget):
    """The target placement chose was filled by concurrent creates before this one's
    insert (the capacity check in its transaction refused it): placing again, with the new
    counts, may find another. Same code and status as NoTarget."""


class SecretError(SandboxerError):
    """A secret ref could not be validated or resolved. Messages name refs, never values."""

    code = "secret_failed"
    exit_code = 7
    http_status = 422


class SecretRefInvalid(SecretError):
    code = "secret_ref_invalid"


class SecretNotFound(SecretError):
    code = "secret_not_found"


class SecretAccessDenied(SecretError):
    code = "secret_access_denied"


class SecretBackendUnavailable(SecretError):
    code = "secret_backend_unavailable"
    http_status = 503


class Conflict(SandboxerError):
    code = "conflict"
    exit_code = 8
    http_status = 409


class Forbidden(SandboxerError):
    """An authenticated actor asked for what only an admin (or another actor) may do."""

    code = "forbidden"
    exit_code = 8
    http_status = 403


class Unauthenticated(SandboxerError):
    """No bearer token, or one that maps to no actor."""

    code = "unauthenticated"
    exit_code = 8
    http_status = 401


class RequestTooLarge(InvalidInput):
    code = "request_too_large"
    http_status = 413


class StoreBusy(SandboxerError):
    code = "store_busy"
    exit_code = 1
    http_status = 503


class StoreUnavailable(SandboxerError):
    """The database server cannot be reached or refused us (messages never carry its URL's
    password)."""

    code = "store_unavailable"
    exit_code = 1
    http_status = 503


class StoreSchemaTooNew(StoreUnavailable):
    """The database was migrated by a newer sand-boxer than this one."""

    code = "store_schema_too_new"


class UnsafePermissions(SandboxerError):
    """A state path others can write or another user owns (see ``sandboxer.perms``)."""

    code = "unsafe_permissions"
    exit_code = 1
    http_status = 500


def from_code(code: str, message: str) -> SandboxerError:
    """Rebuild an error sent over a wire (control socket, HTTP) from its stable code."""
    def walk(cls: type[SandboxerError]) -> list[type[SandboxerError]]:
        return [cls, *(c for sub in cls.__subclasses__() for c in walk(sub))]

    for cls in walk(SandboxerError):
        if cls.code == code:
            return cls(message)
    return SandboxerError(message)


# What a status the web framework answers by itself (no such route, a wrong method, a
# request that fails validation) is, as an error: the one table from HTTP status back to
# an error class, so its code and exit code come from the class like every other error's.
BY_HTTP_STATUS: dict[int, type[SandboxerError]] = {
    400: UsageError, 401: Unauthenticated, 403: Forbidden, 404: NotFound,
    405: MethodNotAllowed, 409: Conflict, 413: RequestTooLarge, 422: InvalidInput,
    500: SandboxerError,
}


def for_http_status(status: int, message: str) -> SandboxerError:
    """The error a framework-made ``status`` stands for (a usage error if none is mapped)."""
    return BY_HTTP_STATUS.get(status, UsageError)(message)


EXIT_CODES: dict[int, str] = {
    0: "ok",
    1: "unexpected error",
    2: "usage",
    3: "not found",
    4: "invalid input or profile",
    5: "provisioning failed",
    6: "no target or capacity",
    7: "secret validation/resolution failed",
    8: "conflict (wrong state or not the owner)",
}
