"""The seccomp filter of every ext.local jail, built with libseccomp (PyPI ``pyseccomp``).

In the spirit of Flatpak's: the calls a development sandbox never needs and that widen the
kernel's attack surface fail with EPERM (or ENOSYS where callers fall back, so glibc's
``clone3`` becomes ``clone`` and the flags of that are checkable). The same program is
handed to bwrap for the jail's init (``--seccomp FD``) and loaded by each session's
process before it execs (``load``), so every process of the sandbox runs under it.

Left allowed, and why: ``ptrace`` (debuggers inside; the pid namespace hides every process
outside the jail); ``personality`` (only the caller's own execution domain; gdb uses it
to turn off address randomisation). ``setns`` and ``chroot`` are denied although the jail
user, holding no capability in any namespace, could not use them anyway: a session loads
the filter as its last step, after it entered the jail (holder.Jail.enter).
"""

from __future__ import annotations

import errno
import functools
import os
import tempfile
from collections.abc import Callable

from sandboxer.extensions.local.enter import filter_loader

# Denied outright: keys, BPF, perf, userfaultfd, kexec and modules, every mount and
# namespace call, swap,
# reboot, accounting, quotas, the kernel log, obsolete and I/O-port calls, io_uring.
DENIED = (
    "add_key", "keyctl", "request_key",
    "bpf", "perf_event_open", "userfaultfd",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr",
    "unshare", "setns", "chroot", "swapon", "swapoff", "reboot", "acct", "quotactl", "syslog",
    "uselib", "iopl", "ioperm", "lookup_dcookie", "nfsservctl",
)
# ENOSYS so that libraries fall back to a call this filter can inspect or to no io_uring.
UNAVAILABLE = ("clone3", "io_uring_setup", "io_uring_enter", "io_uring_register")
# A new namespace through clone(2): CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
# NEWNET.
CLONE_NEW_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                   0x40000000)
SOCKET_FAMILIES = (1, 2, 10, 16)  # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK
TIOCSTI = 0x5412    # push input into a terminal
TIOCLINUX = 0x541C  # console tricks, including selection paste


@functools.cache
def program() -> bytes:
    """The filter as a classic BPF program (``struct sock_filter[]``), built once."""
    import pyseccomp as sc

    f = sc.SyscallFilter(defaction=sc.ALLOW)
    eperm = sc.ERRNO(errno.EPERM)
    for name in DENIED:
        f.add_rule(eperm, name)
    for name in UNAVAILABLE:
        f.add_rule(sc.ERRNO(errno.ENOSYS), name)
    for flag in CLONE_NEW_FLAGS:  # one rule each: the conditions of one rule are AND-ed
        f.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # Socket families: only AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK (as Flatpak). vsock
    # in particular ignores network namespaces.
    nofamily = sc.ERRNO(errno.EAFNOSUPPORT)
    f.add_rule(nofamily, "socket", sc.Arg(0, sc.GT, max(SOCKET_FAMILIES)))
    for family in range(max(SOCKET_FAMILIES)):
        if family not in SOCKET_FAMILIES:
            f.add_rule(nofamily, "socket", sc.Arg(0, sc.EQ, family))
    for request in (TIOCSTI, TIOCLINUX):
        f.add_rule(eperm, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


def pipe_fd() -> int:
    """A readable fd holding the program, for ``bwrap --seccomp FD`` (well under 64 KiB)."""
    r, w = os.pipe()
    try:
        os.write(w, program())
    finally:
        os.close(w)
    return r


def loader() -> Callable[[], None]:
    """A function for a child's last step before exec: no_new_privs, then the filter
    (enter.filter_loader: everything allocated here, in the parent)."""
    return filter_loader(program())
