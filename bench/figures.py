"""What the benchmarks share: a figure checked against its baseline and target, the
percentiles, the raw samples each script writes to ``--json FILE`` for bench/plot.py, and
the bare ``bwrap … true`` every ext.local baseline starts with.

Every figure prints on one line: its value, the baseline measured in the same run, the
ratio between them, the target and whether it holds. Raw samples are milliseconds, under
``"samples": {"series name": [ms, ...]}``, drawn by bench/plot.py (which colours a
series by its name: see there).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PY = sys.executable
# The console script beside the real interpreter, never a pyenv shim (a shim costs ~70 ms).
CLI = shutil.which("sandboxer", path=os.path.dirname(PY)) or "sandboxer"
BWRAP = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent",
         "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
         "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
         "--proc", "/proc", "--dev", "/dev", "true"]


def ms(seconds: list[float]) -> list[float]:
    return [round(s * 1000, 3) for s in seconds]


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks."""
    ordered = sorted(samples)
    k = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class Check:
    """One figure (in ``unit``, ms unless told) against a baseline from the same run, with
    its target.

    ``limit`` is an upper bound in ``unit``, ``max_ratio`` an upper bound on value/baseline;
    either may be None. A figure with neither is printed, not judged. ``series`` names
    the samples it is the median of, where bench/plot.py marks ``limit``.
    """

    what: str
    value: float
    baseline: float
    baseline_what: str
    limit: float | None = None
    max_ratio: float | None = None
    series: str | None = None
    unit: str = "ms"

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else math.inf

    @property
    def passed(self) -> bool | None:
        if self.limit is None and self.max_ratio is None:
            return None
        return ((self.limit is None or self.value <= self.limit)
                and (self.max_ratio is None or self.ratio <= self.max_ratio))

    def target(self) -> str:
        parts = ([f"<= {self.limit:g} {self.unit}"] if self.limit is not None else []) + (
            [f"<= x{self.max_ratio:g}"] if self.max_ratio is not None else [])
        return " and ".join(parts) or "none"

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "    "}[self.passed]
        u = self.unit
        return (f"  {verdict}  {self.what:<44} {self.value:8.1f} {u:<3} baseline "
                f"{self.baseline:7.1f} {u} ({self.baseline_what})   x{self.ratio:.2f}   "
                f"target {self.target()}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": round(self.ratio, 3), "passed": self.passed}


def report(title: str, checks: list[Check]) -> bool:
    """Print a section's figures; True unless one missed its target."""
    print(f"\n== {title}")
    for check in checks:
        print(check.line())
    return all(c.passed is not False for c in checks)


def write_json(path: Path, results: dict[str, Any], samples: dict[str, list[float]],
               checks: list[Check]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {**results, "checks": [c.as_dict() for c in checks], "samples": samples}
    path.write_text(json.dumps(doc, indent=2) + "\n")


def service_pids(home: Path) -> list[int]:
    """The live processes a home's pid files name (its local service) -- only those whose
    command line or environment names the home, never a stranger that reused a pid."""
    pids = []
    for pidfile in sorted((home / "run").glob("*.pid")):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pidfile.read_text().split()[0])
            proc = Path(f"/proc/{pid}")
            mine = str(home).encode()
            if mine in proc.joinpath("cmdline").read_bytes() or \
                    b"SANDBOXER_HOME=" + mine + b"\0" in proc.joinpath("environ").read_bytes():
                pids.append(pid)
    return pids


def stop_services(homes: list[Path], timeout: float = 15) -> None:
    """SIGTERM the services these homes started (none of their sandboxes is left), then
    wait for them to exit, rather than for their idle timers."""
    pids = [p for home in homes for p in service_pids(home)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = [p for p in pids if Path(f"/proc/{p}").exists()]
