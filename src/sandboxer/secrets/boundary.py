"""The manager's pre-provision hook.

Resolution of ``secret_refs`` arrives with the secret-boundary work (DESIGN §6); until then
a profile that declares refs is refused before anything is created, so no sandbox ever
starts without the secrets it was promised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sandboxer.config import Settings
from sandboxer.errors import SecretError

if TYPE_CHECKING:
    from pydantic import SecretStr

    from sandboxer.models.profile import Profile


def resolve(profile: Profile, settings: Settings) -> dict[str, SecretStr]:
    """Validate and resolve every ref of ``profile`` into in-memory values."""
    if profile.setup.secret_refs:
        names = ", ".join(r.name for r in profile.setup.secret_refs)
        raise SecretError(
            f"profile {profile.id} declares secret_refs ({names}) but this build of "
            "sand-boxer cannot resolve secrets yet",
            hint="remove secret_refs from the profile or upgrade sand-boxer",
        )
    return {}


def redact(text: str, secrets: dict[str, SecretStr]) -> str:
    """Replace every resolved value in ``text`` with ``***`` (the safety net)."""
    for value in secrets.values():
        raw = value.get_secret_value()
        if raw:
            text = text.replace(raw, "***")
    return text
