"""Which Client the CLI talks to."""

from __future__ import annotations

from collections.abc import Callable

from sandboxer.client.local import LocalClient


def make_client(progress: Callable[[str], None] | None = None) -> LocalClient:
    return LocalClient(progress=progress)


def parse_labels(items: list[str] | None) -> dict[str, str]:
    """``k=v`` pairs from repeated --label options, validated like profile labels."""
    from sandboxer.errors import InvalidInput
    from sandboxer.values import safe_repr, validate_label

    labels: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidInput(f"--label {safe_repr(item)}: expected key=value")
        try:
            validate_label(key, value)
        except ValueError as e:
            raise InvalidInput(f"--label: {e}") from e
        labels[key] = value
    return labels
