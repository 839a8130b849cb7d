"""sand-boxer: a sandbox custodian (profiles -> isolated, leased, SSH-reachable sandboxes)."""

__version__ = "0.1.0"
