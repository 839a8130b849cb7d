"""QEMU for one sandbox: argument arrays, the KVM probe, the config drive, start and stop.

Every VM runs as one detached ``qemu-system-x86_64`` process named
``-name guest=sandboxer.id=<id>`` with its pidfile in the sandbox's directory, so that
``owned()`` finds it by scanning ``/proc/*/cmdline`` and destroy kills exactly that pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sandboxer.config import Settings
from sandboxer.errors import ProvisionFailed

QEMU = "qemu-system-x86_64"
NAME_PREFIX = "guest=sandboxer.id="
KVM_PROBE_TIMEOUT = 5.0
KVM_PROBE_TTL = 3600.0
CONFIG_LABEL = "SBXCFG"


@dataclass(frozen=True)
class Boot:
    """Everything one VM's command line depends on."""

    sandbox_id: str
    image: Path          # cache entry: vmlinuz, initrd.img
    overlay: Path
    config_drive: Path
    pidfile: Path
    console: Path
    port: int
    cpus: int
    memory_mib: int
    accel: str           # "kvm" | "tcg"
    network: bool = False  # outbound NAT; the host's loopback stays reachable then (docs)


def netdev(b: Boot) -> str:
    """User-mode network: ``restrict=on`` unless ``b.network``, so the guest has no route
    anywhere (not to 10.0.2.2, the host's 127.0.0.1) and only the SSH forward comes in.

    With ``restrict=off`` the guest reaches the internet *and* the host's loopback through
    10.0.2.2: QEMU 7.2 exposes no switch for libslirp's ``disable_host_loopback``.
    """
    restrict = "off" if b.network else "on"
    return f"user,id=net0,restrict={restrict},hostfwd=tcp:127.0.0.1:{b.port}-:22"


def qemu_argv(b: Boot, qemu: str = QEMU) -> list[str]:
    """The argument array that boots one sandbox VM, detached (-daemonize)."""
    accel = ["-accel", "kvm", "-cpu", "host"] if b.accel == "kvm" else [
        "-accel", "tcg,thread=multi" if b.cpus > 1 else "tcg"]
    return [
        qemu, "-name", f"{NAME_PREFIX}{b.sandbox_id}",
        "-machine", "q35", *accel, "-smp", str(b.cpus), "-m", str(b.memory_mib),
        "-nodefaults", "-display", "none", "-vga", "none", "-monitor", "none",
        "-serial", f"file:{b.console}",
        "-kernel", str(b.image / "vmlinuz"), "-initrd", str(b.image / "initrd.img"),
        "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet",
        "-drive", f"file={b.overlay},if=virtio,format=qcow2,discard=unmap",
        "-drive", f"file={b.config_drive},if=virtio,format=raw,readonly=on",
        "-netdev", netdev(b),
        "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-rng-pci",
        "-pidfile", str(b.pidfile), "-daemonize",
    ]


def overlay_argv(base: Path, overlay: Path, size: int | None) -> list[str]:
    """A copy-on-write overlay on the cached image; ``size`` grows it (bytes)."""
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
            str(overlay)]
    return [*argv, str(size)] if size else argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- KVM ------------------------------------------------------------------------------


def _probe_kvm(qemu: str, kernel: Path | None) -> tuple[bool, str]:
    """Boot ``kernel`` under KVM until it panics for want of a root fs (QEMU then exits).

    Opening /dev/kvm, even running SeaBIOS, is not enough: under nested KVM this host ran
    the BIOS and then hung in the first instructions of Linux. A kernel that reaches its
    panic within KVM_PROBE_TIMEOUT proves vCPUs work; otherwise QEMU is killed and the
    answer is "no KVM". The probe never blocks longer than that.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    if kernel is None or not kernel.is_file():
        return False, "no kernel to probe KVM with yet"
    argv = [qemu, "-accel", "kvm", "-m", "128", "-nodefaults", "-display", "none",
            "-serial", "none", "-monitor", "none", "-no-reboot",
            "-kernel", str(kernel), "-append", "panic=-1 quiet"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=KVM_PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return False, f"a KVM guest kernel did not finish booting in {KVM_PROBE_TIMEOUT:.0f}s " \
            "(nested KVM hangs)"
    if proc.returncode == 0:
        return True, "KVM boots a kernel"
    lines = err.decode(errors="replace").strip().splitlines()
    return False, lines[-1] if lines else f"qemu exited {proc.returncode}"


def kvm_usable(settings: Settings, qemu: str = QEMU,
               kernel: Path | None = None) -> tuple[bool, str]:
    """Whether KVM works here, probed at most once an hour per home (cached in run/)."""
    cache = settings.run_dir / "kvm-probe.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        doc = json.loads(cache.read_text())
        if time.time() - float(doc["at"]) < KVM_PROBE_TTL:
            return bool(doc["ok"]), str(doc["reason"])
    ok, reason = _probe_kvm(qemu, kernel)
    if kernel is not None:  # without a kernel the answer is only "not yet known"
        with contextlib.suppress(OSError):
            settings.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            cache.write_text(json.dumps({"ok": ok, "reason": reason, "at": time.time()}))
    return ok, reason


def choose_accel(settings: Settings, wanted: str, qemu: str = QEMU,
                 kernel: Path | None = None) -> tuple[str, str]:
    """("kvm"|"tcg", why) for ``accel: auto|kvm|tcg``; ``kvm`` fails loudly when unusable."""
    if wanted == "tcg":
        return "tcg", "asked for"
    ok, reason = kvm_usable(settings, qemu, kernel)
    if ok:
        return "kvm", reason
    if wanted == "kvm":
        raise ProvisionFailed(f"vm.accel is kvm but KVM is not usable here: {reason}",
                              hint="use accel: auto (falls back to TCG) or tcg")
    return "tcg", f"KVM unusable ({reason})"


# -- the config drive -------------------------------------------------------------------


def make_config_drive(path: Path, *, user: str, authorized_keys: str, host_key: bytes,
                      hostname: str, secrets: bool, forward: Sequence[int] = ()) -> None:
    """A small ext4 image (label SBXCFG) the guest reads before sshd starts; ``forward``:
    the loopback ports sshd lets ``ssh -L`` reach (PermitOpen), none when empty.

    Built with ``mkfs.ext4 -d`` from a private temporary directory: no mount, no root.
    It holds the host private key, so it is 0600 in the sandbox's 0700 directory.
    """
    mkfs = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path="/usr/sbin:/sbin")
    if mkfs is None:
        raise ProvisionFailed("mkfs.ext4 is not installed", hint="apt-get install e2fsprogs")
    with tempfile.TemporaryDirectory(prefix="cfg-", dir=path.parent) as tmp:
        d = Path(tmp)
        files = {"user": user.encode() + b"\n", "authorized_keys": authorized_keys.encode(),
                 "ssh_host_ed25519_key": host_key, "hostname": hostname.encode() + b"\n"}
        if secrets:
            files["secrets"] = b""
        if forward:
            if not all(isinstance(p, int) and 0 < p < 65536 for p in forward):
                raise ProvisionFailed(f"forward ports must be 1 to 65535, got {forward!r}")
            files["forward"] = " ".join(str(p) for p in forward).encode() + b"\n"
        for name, data in files.items():
            fd = os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(fd, 4 << 20)
        os.close(fd)
        done = subprocess.run([mkfs, "-q", "-F", "-L", CONFIG_LABEL, "-d", str(d), str(path)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ProvisionFailed(f"building the config drive failed: {done.stderr.strip()}")


# -- processes ----------------------------------------------------------------------------


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def vm_processes(marker: str) -> dict[str, int]:
    """sandbox id -> pid of every QEMU whose -pidfile lies under ``marker`` (one home)."""
    found: dict[str, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        argv = cmdline(int(entry.name))
        if "-name" not in argv or "-pidfile" not in argv:
            continue
        name = argv[argv.index("-name") + 1]
        pidfile = argv[argv.index("-pidfile") + 1]
        if name.startswith(NAME_PREFIX) and pidfile.startswith(marker):
            found[name.removeprefix(NAME_PREFIX)] = int(entry.name)
    return found


def is_our_vm(pid: int, sandbox_id: str) -> bool:
    argv = cmdline(pid)
    return "-name" in argv and argv[argv.index("-name") + 1] == f"{NAME_PREFIX}{sandbox_id}"


async def kill(pid: int, sandbox_id: str, grace: float = 3.0) -> None:
    """SIGTERM then SIGKILL the VM's QEMU, only if its command line names this sandbox."""
    if not is_our_vm(pid, sandbox_id):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not is_our_vm(pid, sandbox_id):
            return
        await asyncio.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if not is_our_vm(pid, sandbox_id):
            return
        await asyncio.sleep(0.05)
    raise ProvisionFailed(f"QEMU (pid {pid}) of {sandbox_id} survives SIGKILL")


async def wait_exit(pid: int, sandbox_id: str, timeout: float) -> bool:
    """Whether the VM's QEMU exited within ``timeout`` (a clean guest shutdown)."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while is_our_vm(pid, sandbox_id):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
    return True


def cpu_seconds(pid: int) -> float | None:
    """Host CPU the QEMU process used so far (utime + stime), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
