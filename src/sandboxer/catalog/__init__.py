"""The profile catalog: built-in YAML plus operator directories, with ``extends``."""

from sandboxer.catalog.loader import Catalog, deep_merge, fingerprint

__all__ = ["Catalog", "deep_merge", "fingerprint"]
