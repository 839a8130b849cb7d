"""What this host lets ext.local enforce, for ``sandboxer doctor`` (docs/security.md).

Each entry is (check name, ok, detail, fix). A bound the host cannot give is not a
failure — the jail falls back to per-process rlimits or an unbounded /workspace — but the
detail says so; a missing seccomp library is one, since no jail starts without its filter.
"""

from __future__ import annotations

from sandboxer.extensions.local import cgroups, disk

Check = tuple[str, bool, str, str | None]


def report() -> list[Check]:
    out: list[Check] = []
    hierarchy = cgroups.detect()
    if hierarchy is not None:
        out.append(("local memory/cpu/pids bounds", True,
                    f"one cgroup per sandbox: {hierarchy.describe()}", None))
    else:
        out.append(("local memory/cpu/pids bounds", True,
                    "no cgroup this endpoint may manage (it needs root and the memory "
                    "controller): memory is RLIMIT_AS per process, pids RLIMIT_NPROC per uid",
                    None))
    why = disk.available()
    out.append(("local workspace size", True,
                why or "limits.disk: a loop-mounted ext4 image per sandbox", None))
    try:
        from sandboxer.extensions.local import seccomp

        size = len(seccomp.program()) // 8
        out.append(("local seccomp filter", True, f"{size} BPF instructions (libseccomp)",
                    None))
    except (ImportError, OSError) as e:
        out.append(("local seccomp filter", False, f"libseccomp cannot be loaded: {e}",
                    "apt-get install libseccomp2; pip install pyseccomp"))
    return out
