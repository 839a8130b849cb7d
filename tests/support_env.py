"""Settings every test environment keeps, even one built from scratch without the
caller's ``SANDBOXER_*`` variables (tests/conftest.py sets them for the whole run)."""

from __future__ import annotations

# The local service a test home's CLI calls start ends 5 s after its last request instead
# of 300 s: the suite makes hundreds of homes.
KEEP_ENV = frozenset({"SANDBOXER_SERVICE_IDLE_EXIT"})
