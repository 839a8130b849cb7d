"""Running argument arrays on a docker host: this machine, or a target over one SSH link.

Every remote command is an argument array joined with ``shlex.join``; nothing from input
is ever interpolated into a shell string. One SSH connection serves a whole operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shlex
import tarfile
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from typing_extensions import override

from sandboxer.errors import InvalidInput, ProvisionFailed
from sandboxer.extensions._proc import communicate
from sandboxer.extensions.compose_ssh.config import TargetConfig
from sandboxer.extensions.compose_ssh.engine import local_engine
from sandboxer.openssh import known_hosts_name

# The CPU counter of the cgroup process $1 is in: "ns N" (v1) or "us N" (v2).
_CGROUP_CPU = r"""set -u
while IFS=: read -r _ ctrl path; do
    case ",$ctrl," in
    *,cpuacct,*)
        for f in "/sys/fs/cgroup/cpuacct$path/cpuacct.usage" \
                 "/sys/fs/cgroup/cpu,cpuacct$path/cpuacct.usage"; do
            [ -r "$f" ] && { printf 'ns '; cat "$f"; exit 0; }
        done ;;
    ,,)
        f="/sys/fs/cgroup$path/cpu.stat"
        [ -r "$f" ] && while read -r k v; do
            [ "$k" = usage_usec ] && { echo "us $v"; exit 0; }
        done <"$f" ;;
    esac
done <"/proc/$1/cgroup"
exit 1
"""
# docker pause/unpause of a container already so.
_ALREADY = ("is already paused", "is not paused")


def tar_stream(files: Iterable[tuple[str, bytes, int]], dirs: Iterable[str] = ()) -> bytes:
    """An in-memory tar of ``(path, data, mode)`` files after their ``dirs`` (0755).

    Members are root-owned and written in the order given (an extractor sees them so), for
    `docker cp -` into a container or `tar -x` into a sandbox directory.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in dirs:
            d = tarfile.TarInfo(path)
            d.type, d.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(d)
        for path, data, mode in files:
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Completed:
    argv: list[str]
    rc: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    def tail(self, lines: int = 8) -> str:
        text = (self.err.strip() or self.out.strip()).splitlines()
        return "\n".join(text[-lines:]) or f"exit {self.rc}, no output"


class Runner(ABC):
    """Where docker commands run for one target."""

    name: str
    base_dir: str  # where per-sandbox directories live (relative to the login dir if remote)
    # Which docker host this is, whoever asks: what a process may remember about it
    # (which compose it has) is remembered under this.
    key: tuple[str, ...]

    @abstractmethod
    async def run(self, argv: list[str], *, input: bytes | None = None,
                  timeout: float = 120.0) -> Completed:
        """Run ``argv`` to completion (never raises for a non-zero exit)."""

    async def close(self) -> None:
        """Release the connection."""
        return None

    @abstractmethod
    async def run_with_file(self, argv: list[str], stdin: Path,
                            timeout: float = 3600.0) -> Completed:
        """Run ``argv`` with a (large) local file streamed to its standard input."""

    async def check(self, argv: list[str], *, input: bytes | None = None,
                    timeout: float = 120.0, what: str = "") -> Completed:
        """Run, and raise ProvisionFailed with the tail of its output unless it succeeds."""
        done = await self.run(argv, input=input, timeout=timeout)
        if done.rc != 0:
            raise ProvisionFailed(
                f"{what or shlex.join(argv[:3])} failed on target {self.name}: {done.tail()}"
            )
        return done

    # -- the docker calls every create and destroy makes (LocalRunner: the engine's API) --

    async def docker_version(self) -> Completed:
        """The engine's version on stdout, or a failure saying why none answers."""
        return await self.run(["docker", "version", "--format", "{{.Server.Version}}"],
                              timeout=20)

    async def copy_in(self, container: str, tarball: bytes, what: str) -> None:
        """Extract ``tarball`` at the root of ``container`` (`docker cp -`)."""
        await self.check(["docker", "cp", "-", f"{container}:/"], input=tarball, what=what)

    async def labelled(self, kind: str, label: str, *, running_only: bool = False
                       ) -> list[str]:
        """Ids of the ``containers``, ``networks`` or ``volumes`` carrying ``label``
        (``k=v``); none when the engine does not answer."""
        ls = {"containers": ["docker", "ps", *([] if running_only else ["-a"])],
              "networks": ["docker", "network", "ls"],
              "volumes": ["docker", "volume", "ls"]}[kind]
        done = await self.run([*ls, "-q", "--filter", f"label={label}"], timeout=60)
        return done.out.split() if done.rc == 0 else []

    # -- lifecycle (stop/start, pause, activity, restarts) --------------------------------

    async def pause(self, containers: list[str], *, paused: bool) -> None:
        """`docker pause` (or `unpause`) each container; one already so is fine."""
        for c in containers:
            done = await self.run(["docker", "pause" if paused else "unpause", c], timeout=60)
            if done.rc != 0 and not any(s in done.err for s in _ALREADY):
                raise ProvisionFailed(f"docker {'pause' if paused else 'unpause'} of {c} "
                                      f"failed on target {self.name}: {done.tail(3)}")

    async def inspect(self, container: str) -> dict[str, Any] | None:
        """`docker inspect` of one container (``State``, ``Config``…), None when there is
        no such container."""
        return await self._inspect(["inspect"], container)

    async def image_inspect(self, image: str) -> dict[str, Any] | None:
        """`docker image inspect` of one image (``Id``, ``Size``, ``Config``), None when
        there is no such image."""
        return await self._inspect(["image", "inspect"], image)

    async def _inspect(self, command: list[str], name: str) -> dict[str, Any] | None:
        done = await self.run(["docker", *command, "--format", "{{json .}}", "--", name],
                              timeout=30)
        if done.rc != 0:
            if "No such" in done.err:
                return None
            raise ProvisionFailed(f"docker {' '.join(command)} {name} failed on target "
                                  f"{self.name}: {done.tail(3)}")
        found: dict[str, Any] = json.loads(done.out)
        return found

    async def processes(self, container: str) -> list[tuple[float, str]]:
        """(CPU seconds, command line) of each process in the container now: `docker
        top`, run by the engine on the docker host (so it adds no CPU to the container);
        whole seconds."""
        done = await self.check(["docker", "top", container, "-eo", "pid,time,args"],
                                timeout=30, what=f"docker top {container}")
        rows = []
        for line in done.out.splitlines()[1:]:
            parts = line.split(None, 2)
            if len(parts) >= 2:
                rows.append((_clock(parts[1]), parts[2] if len(parts) > 2 else ""))
        return rows

    async def cpu_seconds(self, container: str) -> float:
        """Cumulative CPU of the container's cgroup, read on the docker host (cgroup v1's
        cpuacct.usage or v2's cpu.stat, found from its first process's /proc/PID/cgroup);
        where that cannot be read, the CPU of the processes alive now (``processes``)."""
        info = await self.inspect(container) or {}
        pid = int((info.get("State") or {}).get("Pid") or 0)
        if pid > 0:
            done = await self.run(["sh", "-c", _CGROUP_CPU, "sh", str(pid)], timeout=30)
            unit, _, value = done.out.strip().partition(" ")
            if done.rc == 0 and value.isdigit():
                return int(value) / (1e9 if unit == "ns" else 1e6)
        return sum(t for t, _ in await self.processes(container))

    async def __aenter__(self) -> Runner:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None
                        ) -> None:
        await self.close()


class LocalRunner(Runner):
    """This machine's docker engine (``DOCKER_HOST`` from sand-boxer's environment)."""

    def __init__(self, base_dir: str, env: dict[str, str]) -> None:
        self.name = "local"
        self.base_dir = base_dir
        self.env = env
        self.key = ("local", *sorted(f"{k}={v}" for k, v in env.items()))
        self.engine = local_engine(env)

    @override
    async def docker_version(self) -> Completed:
        if self.engine is not None:
            with contextlib.suppress(OSError):  # the CLI says why nothing answers
                version = await self.engine.version()
                return Completed(["docker", "version"], 0, version.encode(), b"")
        return await super().docker_version()

    @override
    async def copy_in(self, container: str, tarball: bytes, what: str) -> None:
        if self.engine is not None:
            try:
                await self.engine.copy_in(container, tarball)
                return
            except OSError:
                pass  # the CLI says why nothing answers
            except ProvisionFailed as e:
                raise ProvisionFailed(f"{what} failed on target {self.name}: {e.message}"
                                      ) from e
        await super().copy_in(container, tarball, what)

    @override
    async def labelled(self, kind: str, label: str, *, running_only: bool = False
                       ) -> list[str]:
        if self.engine is not None:
            with contextlib.suppress(OSError, ProvisionFailed):
                return await self.engine.labelled(kind, label, running_only=running_only)
        return await super().labelled(kind, label, running_only=running_only)

    @override
    async def pause(self, containers: list[str], *, paused: bool) -> None:
        if self.engine is not None:
            try:
                for c in containers:
                    await self.engine.pause(c, paused=paused)
                return
            except OSError:
                pass  # the CLI says why nothing answers
        await super().pause(containers, paused=paused)

    @override
    async def inspect(self, container: str) -> dict[str, Any] | None:
        if self.engine is not None:
            try:
                return await self.engine.inspect(container)
            except OSError:
                pass
            except ProvisionFailed as e:
                if " 404: " in e.message:
                    return None
                raise
        return await super().inspect(container)

    @override
    async def processes(self, container: str) -> list[tuple[float, str]]:
        if self.engine is not None:
            with contextlib.suppress(OSError):
                top = await self.engine.top(container, "-eo pid,time,args")
                return [(_clock(str(p[1])), str(p[2]) if len(p) > 2 else "")
                        for p in top.get("Processes") or [] if len(p) >= 2]
        return await super().processes(container)

    @override
    async def cpu_seconds(self, container: str) -> float:
        if self.engine is not None:  # the cgroup's counter, to the nanosecond
            with contextlib.suppress(OSError):
                return await self.engine.cpu_ns(container) / 1e9
        return await super().cpu_seconds(container)

    @override
    async def run(self, argv: list[str], *, input: bytes | None = None,
                  timeout: float = 120.0) -> Completed:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=self.env, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            return Completed(argv, 127, b"", f"{argv[0]}: command not found".encode())
        done = await communicate(proc, input, timeout)
        if done is None:
            return Completed(argv, 124, b"", f"timed out after {timeout:.0f}s".encode())
        return Completed(argv, proc.returncode or 0, *done)


    @override
    async def run_with_file(self, argv: list[str], stdin: Path,
                            timeout: float = 3600.0) -> Completed:
        with stdin.open("rb") as f:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=self.env, stdin=f, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            done = await communicate(proc, None, timeout)
        if done is None:
            return Completed(argv, 124, b"", f"timed out after {timeout:.0f}s".encode())
        return Completed(argv, proc.returncode or 0, *done)


class SSHRunner(Runner):
    """A target reached over one asyncssh connection, host key pinned."""

    def __init__(self, target: TargetConfig, conn: Any) -> None:
        self.name = target.name
        self.base_dir = ".sandboxer/sandboxes"
        self.key = ("ssh", target.name, target.user, target.host, str(target.port))
        self._conn = conn

    @classmethod
    async def connect(cls, target: TargetConfig, timeout: float = 10.0) -> SSHRunner:
        import asyncssh

        if not target.host_keys:
            raise ProvisionFailed(
                f"target {target.name} has no recorded host key",
                hint=f"run `sandboxer targets remove {target.name}` and add it again",
            )
        known = asyncssh.import_known_hosts("\n".join(target.host_keys) + "\n")
        keys = [target.identity_file] if target.identity_file else ()
        try:
            conn = await asyncio.wait_for(asyncssh.connect(
                target.host, target.port, username=target.user, known_hosts=known,
                client_keys=keys, agent_path=None, config=None,
            ), timeout)
        except asyncssh.HostKeyNotVerifiable as e:
            raise ProvisionFailed(
                f"target {target.name} ({target.host}:{target.port}) presented a host key "
                "that does not match the one recorded when it was added",
                hint="if the host was rebuilt on purpose, remove and re-add the target",
            ) from e
        except (OSError, asyncssh.Error, TimeoutError) as e:
            # A host whose link is down answers nothing: say so rather than "TimeoutError".
            why = f"no answer within {timeout:.0f}s" if isinstance(e, TimeoutError) else (
                str(e) or type(e).__name__)
            raise ProvisionFailed(
                f"cannot reach target {target.name} over SSH "
                f"({target.user}@{target.host}:{target.port}): {why}"
            ) from e
        return cls(target, conn)

    @override
    async def run(self, argv: list[str], *, input: bytes | None = None,
                  timeout: float = 120.0) -> Completed:
        import asyncssh

        try:
            res = await asyncio.wait_for(
                self._conn.run(shlex.join(argv), input=input, check=False, encoding=None),
                timeout,
            )
        except TimeoutError:
            return Completed(argv, 124, b"", f"timed out after {timeout:.0f}s".encode())
        except (OSError, asyncssh.Error) as e:
            raise ProvisionFailed(f"SSH to target {self.name} broke: {e}") from e
        status = res.exit_status if res.exit_status is not None else 255
        return Completed(argv, status, bytes(res.stdout or b""), bytes(res.stderr or b""))

    @override
    async def run_with_file(self, argv: list[str], stdin: Path,
                            timeout: float = 3600.0) -> Completed:
        res = await asyncio.wait_for(self._conn.run(
            shlex.join(argv), stdin=str(stdin), check=False, encoding=None), timeout)
        status = res.exit_status if res.exit_status is not None else 255
        return Completed(argv, status, bytes(res.stdout or b""), bytes(res.stderr or b""))

    @override
    async def close(self) -> None:
        self._conn.close()
        await self._conn.wait_closed()


async def first_contact(target: TargetConfig, timeout: float = 10.0) -> tuple[str, str]:
    """Connect without a pinned key to learn it: (known_hosts line, SHA256 fingerprint)."""
    import asyncssh

    keys = [target.identity_file] if target.identity_file else ()
    try:
        conn = await asyncio.wait_for(asyncssh.connect(
            target.host, target.port, username=target.user, known_hosts=None,
            client_keys=keys, agent_path=None, config=None,
        ), timeout)
    except asyncssh.KeyImportError as e:  # a ValueError, not an asyncssh.Error
        raise InvalidInput(f"--identity {target.identity_file}: not a private key SSH can "
                           f"use: {e}", hint="give an unencrypted OpenSSH private key") from e
    except (OSError, asyncssh.Error, TimeoutError) as e:
        raise ProvisionFailed(
            f"cannot reach {target.user}@{target.host}:{target.port} over SSH: "
            f"{e or type(e).__name__}"
        ) from e
    try:
        key = conn.get_server_host_key()
        if key is None:
            raise ProvisionFailed(f"{target.host}:{target.port} presented no host key")
        public = key.export_public_key().decode().strip()
        name = known_hosts_name(target.host, target.port)
        return f"{name} {public}", key.get_fingerprint("sha256")
    finally:
        conn.close()
        await conn.wait_closed()


def _clock(text: str) -> float:
    """ps's ``[DD-]HH:MM:SS`` as seconds (0 when it is not that)."""
    days, _, hms = text.rpartition("-")
    try:
        h, m, sec = (int(x) for x in hms.split(":"))
        return float((int(days or 0) * 24 + h) * 3600 + m * 60 + sec)
    except ValueError:
        return 0.0


def local_env(env: dict[str, str]) -> dict[str, str]:
    """The environment docker runs with on the local target."""
    keep = {k: v for k, v in env.items() if k in ("PATH", "HOME", "DOCKER_HOST",
                                                  "DOCKER_CONFIG", "DOCKER_CONTEXT")}
    keep.setdefault("PATH", os.defpath)
    return keep
