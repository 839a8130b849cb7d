"""Packer-built VM images, cached under ``$SANDBOXER_HOME/images/<key>``.

The key hashes the template, its variables and every input file the template names
(``_sandboxer_inputs``), so an edit rebuilds and nothing else does. A build runs in a
temporary directory next to the cache and becomes an entry by one ``rename``: a build that
fails half-way (Packer error, disk full, interrupted) leaves no entry a later create could
use. Concurrent creates that need the same image wait on ``<key>.lock`` for one build.

An entry holds ``disk.qcow2`` (the base that sandboxes overlay), ``vmlinuz`` and
``initrd.img`` (booted with ``-kernel``/``-initrd``) and ``image.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sandboxer
from sandboxer import childenv, envvars
from sandboxer.config import Settings
from sandboxer.errors import InvalidInput, ProvisionFailed

KEY_VERSION = "1"
ENTRY_FILES = ("disk.qcow2", "vmlinuz", "initrd.img")
Progress = Callable[[str], None]


def packer_dir(settings: Settings) -> Path:
    chosen = envvars.path(settings.env, "SANDBOXER_PACKER_DIR", directory=True)
    return chosen or Path(sandboxer.__file__).resolve().parents[2] / "packer"


def cache_dir(settings: Settings) -> Path:
    chosen = envvars.path(settings.env, "SANDBOXER_VM_IMAGES", directory=True)
    return chosen or settings.home / "images"


def resolve_template(settings: Settings, template: str, source: Path | None) -> Path:
    """An absolute path, else relative to the profile file, else under packer/."""
    candidates = [Path(template)] if Path(template).is_absolute() else [
        *([source.parent / template] if source is not None else []),
        packer_dir(settings) / template,
    ]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise InvalidInput(f"Packer template {template!r} not found",
                       hint="looked in: " + ", ".join(str(c) for c in candidates))


@dataclass(frozen=True)
class Template:
    """A parsed JSON template and the sand-boxer keys it carries."""

    path: Path
    doc: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> Template:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InvalidInput(f"Packer template {path}: {e}",
                               hint="Debian's packer 1.6.6 reads JSON templates") from e
        if not isinstance(doc, dict):
            raise InvalidInput(f"Packer template {path}: not a JSON object")
        return cls(path, doc)

    @property
    def declared(self) -> set[str]:
        return set(self.doc.get("variables") or {})

    @property
    def seed(self) -> Path | None:
        seed = self.doc.get("_sandboxer_seed")
        return self.path.parent / seed if seed else None

    @property
    def inputs(self) -> list[Path]:
        names = [n.strip() for n in str(self.doc.get("_sandboxer_inputs", "")).split(",")]
        return [self.path.parent / n for n in names if n]

    def check_vars(self, given: dict[str, str]) -> None:
        unknown = sorted(set(given) - self.declared)
        if unknown:
            raise InvalidInput(f"Packer template {self.path} declares no variable "
                               f"{', '.join(unknown)}",
                               hint=f"declared: {', '.join(sorted(self.declared)) or 'none'}")


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file())


def cache_key(template: Template, variables: dict[str, str]) -> str:
    """sha256 over the template, its variables and its input files (names, bytes, x bit)."""
    h = hashlib.sha256(f"sandboxer-vm-image/{KEY_VERSION}\n".encode())
    h.update(template.path.read_bytes())
    h.update(json.dumps(variables, sort_keys=True).encode())
    base = template.path.parent
    extra = [*([template.seed] if template.seed else []), *template.inputs]
    for root in extra:
        for f in _files(root):
            rel = f.relative_to(base) if f.is_relative_to(base) else f
            h.update(f"\n{rel} {'x' if os.access(f, os.X_OK) else '-'}\n".encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:24]


def entry(settings: Settings, key: str) -> Path | None:
    """The complete cache entry for ``key``, or None."""
    d = cache_dir(settings) / key
    return d if all((d / f).is_file() for f in ENTRY_FILES) else None


class _Lock:
    """An exclusive flock on ``<key>.lock``, taken without blocking the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    async def __aenter__(self) -> _Lock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                await asyncio.sleep(0.2)

    async def __aexit__(self, *exc: object) -> None:
        os.close(self.fd)


async def _stream(argv: list[str], env: dict[str, str], cwd: Path, progress: Progress,
                  prefix: str) -> tuple[int, list[str]]:
    """Run a build step; each line of its output becomes progress; keep the last 25."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)
    except FileNotFoundError as e:
        raise ProvisionFailed(f"{argv[0]} is not installed",
                              hint="apt-get install packer qemu-system-x86 qemu-utils") from e
    assert proc.stdout is not None  # noqa: S101 - PIPE was asked for
    tail: list[str] = []
    try:
        async for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            tail = [*tail[-24:], line]
            progress(f"{prefix}{line}")
        return await proc.wait(), tail
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        await proc.wait()
        raise


async def build(settings: Settings, template_path: Path, variables: dict[str, str], *,
                accel: str = "auto", progress: Progress = lambda _m: None,
                force: bool = False) -> tuple[Path, bool]:
    """The cache entry for this template and variables, built now if missing.

    Returns (entry directory, whether Packer ran). Waits for a concurrent build of the
    same key instead of starting a second one. ``accel`` (auto|kvm|tcg) is Packer's
    accelerator; auto probes KVM with the seed's kernel.
    """
    template = Template.load(template_path)
    template.check_vars(variables)
    key = cache_key(template, variables)
    root = cache_dir(settings)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    found = entry(settings, key)
    if found is not None and not force:
        return found, False
    packer = shutil.which("packer", path=settings.env.get("PATH"))
    if packer is None:
        raise ProvisionFailed("Packer is not installed, and image "
                              f"{key} of {template.path.name} is not cached",
                              hint="apt-get install packer (Debian ships 1.6.6)")
    progress(f"image {key}: waiting for the build lock")
    async with _Lock(root / f"{key}.lock"):
        found = entry(settings, key)
        if found is not None and not force:
            progress(f"image {key}: built meanwhile by another process")
            return found, False
        start = time.monotonic()
        await _build(settings, packer, template, variables, key, accel, progress)
        progress(f"image {key}: built in {time.monotonic() - start:.0f}s")
        done = entry(settings, key)
        assert done is not None  # noqa: S101 - _build renamed a complete entry into place
        return done, True


async def _build(settings: Settings, packer: str, template: Template,
                 variables: dict[str, str], key: str, accel: str,
                 progress: Progress) -> None:
    root = cache_dir(settings)
    work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=root))
    env = {**childenv.for_tool({**os.environ, **settings.env}, prefixes=("PACKER_",)),
           "PACKER_LOG": "1",
           "PACKER_LOG_PATH": str(work / "packer.log"), "CHECKPOINT_DISABLE": "1",
           "PACKER_CACHE_DIR": str(work / "packer_cache")}
    try:
        given = dict(variables)
        if template.seed is not None:
            seed_dir = work / "seed"
            progress(f"image {key}: seed {template.seed.name}")
            rc, tail = await _stream(["bash", str(template.seed), str(seed_dir)], env,
                                     template.path.parent, progress, "seed: ")
            if rc != 0:
                raise ProvisionFailed(f"the seed step of {template.path.name} failed "
                                      f"(exit {rc}):\n" + "\n".join(tail[-15:]))
            given.setdefault("seed_dir", str(seed_dir))
        from sandboxer.extensions.vm_packer.qemu import choose_accel

        kernel = Path(given["seed_dir"]) / "vmlinuz" if "seed_dir" in given else None
        accelerator, why = await asyncio.to_thread(choose_accel, settings, accel,
                                                   kernel=kernel)
        progress(f"image {key}: Packer accelerator {accelerator} ({why})")
        ours = {"output_dir": str(work / "out"), "accelerator": accelerator}
        given |= {k: v for k, v in ours.items() if k in template.declared and k not in given}
        argv = [packer, "build", "-color=false", "-force"]
        for k, v in sorted(given.items()):
            argv += ["-var", f"{k}={v}"]
        progress(f"image {key}: packer build {template.path.name}")
        rc, tail = await _stream([*argv, str(template.path)], env, template.path.parent,
                                 progress, "packer: ")
        if rc != 0:
            log_tail = _tail(work / "packer.log", 15)
            raise ProvisionFailed(
                f"packer build {template.path.name} failed (exit {rc}):\n"
                + "\n".join(tail[-15:]) + (f"\n-- last lines of packer.log --\n{log_tail}"
                                           if log_tail else ""))
        _assemble(work, given, template, key)
        _replace(work / "entry", root / key, work)
    except OSError as e:
        raise ProvisionFailed(f"building image {key} failed: {e}",
                              hint=f"is {root} full? (df -h {root})") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _assemble(work: Path, given: dict[str, str], template: Template, key: str) -> None:
    """Gather Packer's disk and the seed's kernel into ``work/entry`` (same file system)."""
    out = Path(given.get("output_dir", work / "out"))
    disks = sorted(out.glob("*.qcow2")) or sorted(p for p in out.iterdir() if p.is_file())
    if not disks:
        raise ProvisionFailed(f"packer build {template.path.name} left no disk in {out}")
    e = work / "entry"
    e.mkdir()
    os.rename(disks[0], e / "disk.qcow2")
    boot = Path(given["seed_dir"]) if "seed_dir" in given else out
    for name in ("vmlinuz", "initrd.img"):
        if not (boot / name).is_file():
            raise ProvisionFailed(f"image {key}: no {name} next to the disk (the seed step "
                                  "or the template must provide the kernel and initrd)")
        shutil.copyfile(boot / name, e / name)
    meta = {"key": key, "template": str(template.path),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "vars": {k: v for k, v in given.items() if k not in ("seed_dir", "output_dir")}}
    (e / "image.json").write_text(json.dumps(meta, indent=2) + "\n")
    with open(e / "disk.qcow2", "rb") as f:
        os.fsync(f.fileno())


def _replace(new: Path, entry_dir: Path, work: Path) -> None:
    """Put ``new`` in place as the entry; a forced rebuild's old entry goes only now, once
    the new one is complete (a rename onto a directory that is not empty fails)."""
    if entry_dir.exists():
        os.rename(entry_dir, work / "old")  # removed with ``work``
    os.rename(new, entry_dir)


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
