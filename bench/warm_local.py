"""ext.local create-to-ready in one warm process: the API's path without HTTP.

    python3 bench/warm_local.py [--rounds N] [--burst N] [--concurrency C]
                                [--endpoint in-process|keeper]

Functions for other benchmarks (each runs in this process, after
``extensions.base.warm_up_all()``, in a home of its own under /var/tmp):

- ``measure_service_create(rounds, endpoint=...) -> list[float]``: ms of each
  ``Service.create("profile.local")`` to ready, one at a time (each destroyed after).
- ``measure_burst(n=100, concurrency=10, endpoint=...) -> list[float]``: ms of each of
  ``n`` creates run by ``concurrency`` concurrent clients; only those that became ready
  (``len(result) < n`` means some failed; they are logged).
- ``measure_baseline(rounds) -> list[float]``: ms of the floor in this process: a bare
  ``bwrap … true`` plus one asyncssh ``true`` round trip to an existing sandbox.
- ``measure_paired(rounds) -> (baseline, creates)``: both, one of each per round in turn
  (the same load for both: take the ratio of these).
- ``measure_sessions(rounds) -> dict``: ms of a session on an open asyncssh connection
  (``conn.run("true")``), of its spawn inside the endpoint (``spawn_jailed`` called to
  returned: the child runs), of a jail's start (``Jail.start`` called to its holder
  found, and to its return: the holder's namespaces open, every process in the cgroup)
  and of a create to ready, each through the spawner and without it
  (``spawnerclient.enabled = False``: the endpoint forks a session itself, the way before
  the spawner), the two ways in turn in the same rounds. A jail starts through setpriv
  and prlimit both ways (the spawner starts one only where those are missing): its rows
  show the jail's share of a create, and that the spawner does not slow it.

``endpoint="in-process"`` runs the SSH endpoint in this process, on the Service's own
ext.local instance (as the local service, core's keeper daemon, hosts it);
``endpoint="keeper"`` leaves it to the keeper daemon the first create starts (as under
``sandboxer serve``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("bench.warm_local")
BWRAP = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent",
         "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
         "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
         "--proc", "/proc", "--dev", "/dev", "true"]
TARGETS = {"create_ms": 25.0, "burst_p99_over_p50": 2.0}
WHAT = ("spawn", "run", "jail", "jailstart", "create")  # measure_sessions' figures



def _endpoint(svc: Any, st: Any) -> Any:
    """The SSH endpoint of ready sandbox ``st``, from its descriptor."""
    from sandboxer.models.extension import Endpoint

    r = st.reachability
    if r is None:
        raise RuntimeError(f"{st.id} has no descriptor")
    return Endpoint(host=r.host, port=r.port, user=r.user, host_key="-",
                    identity_file=r.identity_file,
                    known_hosts_file=str(svc.settings.keys_dir / f"{st.id}.known_hosts"))

def _home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="sbx-warm-local-", dir="/var/tmp"))
    home.chmod(0o711)
    return home


@contextlib.asynccontextmanager
async def _service(endpoint: str, capacity: int = 256) -> AsyncIterator[Any]:
    from sandboxer.config import Settings
    from sandboxer.extensions import base
    from sandboxer.service.app import Service

    if endpoint not in ("in-process", "keeper"):
        raise ValueError(f"endpoint must be in-process or keeper, not {endpoint!r}")
    base.warm_up_all()
    home = _home()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_")}
    env.update(SANDBOXER_HOME=str(home), SANDBOXER_LOCAL_IDLE_EXIT="30",
               SANDBOXER_LOCAL_CAPACITY=str(capacity))
    svc = Service(Settings.from_env(env), upkeep=False)
    served: asyncio.Task[None] | None = None
    if endpoint == "in-process":
        ext = svc.manager.extension("ext.local")
        served = asyncio.create_task(ext.housekeep(ext.host))  # type: ignore[attr-defined]
        from sandboxer.extensions.local import control

        deadline = time.monotonic() + 15
        while not await control.ping(svc.settings):
            if served.done() or time.monotonic() > deadline:
                await served
                raise RuntimeError("the in-process endpoint did not start")
            await asyncio.sleep(0.01)
    try:
        yield svc
    finally:
        from sandboxer.models.queries import LIVE_STATES

        for doc in svc.store.query_documents(states=list(LIVE_STATES)):
            with contextlib.suppress(Exception):
                await svc.destroy(doc["id"])
        if served is not None:
            served.cancel()
            with contextlib.suppress(BaseException):
                await served
        svc.close()
        shutil.rmtree(home, ignore_errors=True)


def _request() -> Any:
    from sandboxer.models.requests import CreateRequest

    return CreateRequest(profile="profile.local", ttl="30m")


async def _timed(fn: Callable[[], Awaitable[T]]) -> tuple[float, T]:
    t = time.perf_counter()
    out = await fn()
    return (time.perf_counter() - t) * 1000, out


def measure_service_create(rounds: int = 20, *, endpoint: str = "in-process",
                           warmup: int = 3) -> list[float]:
    """ms of each of ``rounds`` sequential creates to ready (after ``warmup`` untimed)."""
    async def main() -> list[float]:
        async with _service(endpoint) as svc:
            out = []
            for i in range(warmup + rounds):
                ms, st = await _timed(lambda: svc.create(_request()))
                await svc.destroy(st.id)
                if i >= warmup:
                    out.append(ms)
            return out

    return asyncio.run(main())


def measure_burst(n: int = 100, concurrency: int = 10, *, endpoint: str = "in-process",
                  warmup: int = 3) -> list[float]:
    """ms of each create of a burst of ``n`` from ``concurrency`` concurrent clients that
    became ready; the sandboxes live until the burst ends, then are destroyed."""
    async def main() -> list[float]:
        async with _service(endpoint, capacity=n + warmup + 8) as svc:
            for _ in range(warmup):
                st = await svc.create(_request())
                await svc.destroy(st.id)
            todo = iter(range(n))
            out: list[float] = []
            failed: list[str] = []

            async def client() -> None:
                for _ in todo:
                    try:
                        ms, _st = await _timed(lambda: svc.create(_request()))
                        out.append(ms)
                    except Exception as e:
                        failed.append(str(e))

            await asyncio.gather(*(client() for _ in range(concurrency)))
            for why in failed:
                log.warning("a create of the burst failed: %s", why)
            return out

    return asyncio.run(main())


def measure_baseline(rounds: int = 20, *, endpoint: str = "in-process") -> list[float]:
    """ms of a bare ``bwrap … true`` plus one asyncssh ``true`` to an existing sandbox."""
    return measure_paired(rounds, endpoint=endpoint)[0]


def measure_paired(rounds: int = 20, *, endpoint: str = "in-process",
                   warmup: int = 3) -> tuple[list[float], list[float]]:
    """(baseline, create) ms, one of each per round in turn, so that both see the same
    load: the baseline of ``measure_baseline``, the create of ``measure_service_create``."""
    from sandboxer.extensions._ssh import _asyncssh_run

    async def main() -> tuple[list[float], list[float]]:
        async with _service(endpoint) as svc:
            st = await svc.create(_request())
            ep = _endpoint(svc, st)
            base, creates = [], []
            for i in range(warmup + rounds):
                t = time.perf_counter()
                proc = await asyncio.create_subprocess_exec(*BWRAP)
                await proc.wait()
                rc, text = await _asyncssh_run(ep, "true", 10)
                if rc != 0:
                    raise RuntimeError(f"the baseline's SSH round trip failed: {text}")
                b = (time.perf_counter() - t) * 1000
                ms, made = await _timed(lambda: svc.create(_request()))
                await svc.destroy(made.id)
                if i >= warmup:
                    base.append(b)
                    creates.append(ms)
            return base, creates

    return asyncio.run(main())


def measure_sessions(rounds: int = 40, *, warmup: int = 5) -> dict[str, list[float]]:
    """Samples (ms) under ``run_spawner``, ``run_inprocess``, ``spawn_spawner``,
    ``spawn_inprocess``, ``create_spawner`` and ``create_inprocess`` (see the module
    docstring); the endpoint runs in this process, so both ways are switched here."""
    from sandboxer.extensions._ssh import _connect
    from sandboxer.extensions.local import sessions, spawnerclient
    from sandboxer.extensions.local.holder import Jail

    out: dict[str, list[float]] = {f"{what}_{way}": [] for what in WHAT
                                   for way in ("spawner", "inprocess")}
    real = sessions.spawn_jailed
    spawns: list[float] = []
    jail_starts: list[float] = []
    real_start, real_wait = Jail.start, Jail._wait_for_holder
    began = [0.0]

    async def timed_start(self: Jail) -> None:
        began[0] = time.perf_counter()
        await real_start(self)
        jail_starts.append((time.perf_counter() - began[0]) * 1000)

    async def timed_wait(self: Jail) -> int:
        pid = await real_wait(self)
        jail_starts.append((time.perf_counter() - began[0]) * 1000)
        return pid

    async def timed_spawn(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return await real(*args, **kwargs)
        finally:
            spawns.append((time.perf_counter() - t) * 1000)

    async def main() -> None:
        async with _service("in-process") as svc:
            st = await svc.create(_request())
            ep = _endpoint(svc, st)
            sessions.spawn_jailed = timed_spawn  # type: ignore[assignment]
            Jail.start, Jail._wait_for_holder = timed_start, timed_wait  # type: ignore[method-assign]
            try:
                async with _connect(ep) as conn:
                    for i in range(warmup + rounds):
                        for way in ("spawner", "inprocess"):
                            spawnerclient.enabled = way == "spawner"
                            spawns.clear()
                            jail_starts.clear()
                            t = time.perf_counter()
                            done = await conn.run("true", check=False)
                            ms = (time.perf_counter() - t) * 1000
                            if done.exit_status != 0:
                                raise RuntimeError(f"a session failed: {done.stderr!r}")
                            ms_create, made = await _timed(lambda: svc.create(_request()))
                            await svc.destroy(made.id)
                            if i >= warmup:
                                out[f"run_{way}"].append(ms)
                                out[f"spawn_{way}"].append(spawns[0])
                                out[f"create_{way}"].append(ms_create)
                                out[f"jail_{way}"].append(jail_starts[0])
                                out[f"jailstart_{way}"].append(jail_starts[1])
            finally:
                sessions.spawn_jailed = real
                Jail.start, Jail._wait_for_holder = real_start, real_wait  # type: ignore[method-assign]
                spawnerclient.enabled = True

    asyncio.run(main())
    return out


def print_sessions(samples: dict[str, list[float]]) -> None:
    """The figures of ``measure_sessions``, each against the in-process way as baseline."""
    from figures import Check, report

    n = len(samples["run_spawner"])
    what = {"spawn": f"session spawn in the endpoint (median of {n})",
            "run": f"session round trip, conn.run true (median of {n})",
            "jail": f"jail start, Jail.start to holder found (median of {n})",
            "jailstart": f"jail start, Jail.start called to returned (median of {n})",
            "create": f"Service.create to ready (median of {n})"}
    report("ext.local: through the spawner, against the endpoint starting them itself",
           [Check(what[k], statistics.median(samples[f"{k}_spawner"]),
                  statistics.median(samples[f"{k}_inprocess"]),
                  "endpoint's own fork/launcher, same rounds")
            for k in WHAT])


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--burst", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--endpoint", default="in-process")
    ap.add_argument("--skip-burst", action="store_true")
    ap.add_argument("--sessions", action="store_true",
                    help="only the session figures: the spawner against in-process forks")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.sessions:
        print_sessions(measure_sessions(args.rounds))
        return 0
    baseline, creates = measure_paired(args.rounds, endpoint=args.endpoint)
    base, med = statistics.median(baseline), statistics.median(creates)
    print(f"baseline (bwrap true + asyncssh true): {base:.1f} ms")
    print(f"Service.create to ready ({args.endpoint}): median {med:.1f} ms, "
          f"ratio {med / base:.2f}, target <= {TARGETS['create_ms']:.0f} ms; "
          f"min {min(creates):.1f} max {max(creates):.1f}")
    if args.skip_burst:
        return 0
    burst = measure_burst(args.burst, args.concurrency, endpoint=args.endpoint)
    p50, p90, p99 = (pct(burst, p) for p in (50, 90, 99))
    print(f"burst {len(burst)}/{args.burst} ready from {args.concurrency} clients: "
          f"p50 {p50:.1f} p90 {p90:.1f} p99 {p99:.1f} ms, p99/p50 {p99 / p50:.2f} "
          f"(target <= {TARGETS['burst_p99_over_p50']:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
