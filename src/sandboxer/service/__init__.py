"""The one async application service every shell calls (CLI, HTTP API, MCP).

Hosted in-process (``LocalClient``), by ``sandboxer serve`` and by core's keeper process
(``service/daemon.py``), which also runs an extension's background housekeeping.
"""
