"""ext.local: sandboxes jailed with bubblewrap on this machine, reached over SSH.

Importing this package stays light (no asyncssh): only the endpoint daemon needs it.
"""

from sandboxer.extensions.local.extension import LocalExtension

__all__ = ["LocalExtension"]
