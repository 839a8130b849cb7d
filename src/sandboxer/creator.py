"""Who is creating a sandbox, so a create whose process died can be told from a slow one.

A creator is ``host/boot-id/pid/start-time``: the start time (clock ticks since boot, from
/proc) guards against pid reuse, the boot id against a reboot. Only creators on this host
can be judged; others are assumed alive (a shared store spans hosts).
"""

from __future__ import annotations

import os
import socket
from functools import cache
from pathlib import Path


@cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) comes after the parenthesised command name, which may hold spaces.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie has finished its work
        return None
    return fields[19]


def of(pid: int) -> str:
    return f"{socket.gethostname()}/{_boot_id()}/{pid}/{_start_time(pid) or '?'}"


def current() -> str:
    return _current(os.getpid())


@cache
def _current(pid: int) -> str:
    """This process's ``of``, read once per pid (a fork has its own); every create and
    state change names its creator."""
    return of(pid)


def is_gone(creator: str | None) -> bool:
    """True when ``creator`` ran on this host and that process no longer exists."""
    if not creator:
        return False
    try:
        host, boot, pid, start = creator.split("/")
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    if boot != _boot_id():
        return True
    return _start_time(int(pid)) != start
