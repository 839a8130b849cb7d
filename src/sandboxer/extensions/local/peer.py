"""Who is on the other end of the control socket: ``sandboxer.peer``, shared with the
local service's socket."""

from sandboxer.peer import check_server, client_allowed, peer, unsafe

__all__ = ["check_server", "client_allowed", "peer", "unsafe"]
