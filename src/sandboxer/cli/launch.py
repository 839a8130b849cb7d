"""The ``sandboxer`` command, started without ``site`` until something needs it.

At start, ``site`` runs every ``.pth`` file of the interpreter. A ``.pth`` may import
anything, so this start can cost more than the command itself: on the machine this was
measured on, one imported certifi, and ``python -c pass`` took 45 ms against 9.5 ms with
``-S``. The thin client (``client/service.py``) needs only the standard library and this
package. So the command that ``install`` writes runs Python with ``-S`` and puts the
package's directory on ``sys.path``. ``site`` is loaded at the first import that neither
can satisfy (pydantic, yaml or a plugin, on every in-process path) or the first look at
installed distributions, whichever comes first (``sandboxer.sitehook``).

``scripts/setup.sh`` runs ``python -m sandboxer.cli.launch``. It writes the command in
place of pip's wrapper, whose ``#!python`` line pip rewrites without its options. It
does so only for a source checkout (an editable install). For a regular install the
package lies in site-packages, and the directory it would put on ``sys.path`` would
bring every ``.pth``-less package with it. There pip's wrapper stays.
"""

from __future__ import annotations

import sys

# typing's own TYPE_CHECKING would import typing (and collections.abc), ~3 ms before this
# command's first line starts the local service (sandboxer.early); checkers read this one.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path


def run(root: str) -> int:
    """What the written command runs: ``sandboxer.cli.main.main`` with ``site`` deferred
    (``sandboxer.sitehook``); ``root`` is the package's directory it put on ``sys.path``.
    A first ``create`` starts the local service before anything else (``sandboxer.early``).
    """
    from sandboxer import early

    early.start(sys.argv[1:], root)
    from sandboxer import sitehook

    sitehook.install(root)
    from sandboxer.cli.main import main

    rc = main()
    _exit_now(rc)
    return rc


def _exit_now(rc: int) -> None:
    """End the process without tearing the interpreter down (~4 ms of every thin command)
    when nothing waits for that teardown: no atexit callback (an in-process path registers
    some: the redaction net's logging, a spare image's removal) and no thread but daemon
    ones. Output is flushed first; a stream closed or failing means the usual teardown."""
    import atexit
    import os

    pending = getattr(atexit, "_ncallbacks", None)  # CPython's
    if pending is None or pending() != 0:
        return
    threading = sys.modules.get("threading")
    if threading is not None and any(
            t.is_alive() and not t.daemon and t is not threading.main_thread()
            for t in threading.enumerate()):
        return
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is None:
                return
            stream.flush()
    except Exception:  # a closed pipe: the usual teardown reports it as it always did
        return
    os._exit(rc)


SHEBANG_MAX = 127
TEMPLATE = """#!{python} -S
# sand-boxer's command, written by `python -m sandboxer.cli.launch` (scripts/setup.sh)
# in place of pip's: Python starts without `site` until something needs it
# (src/sandboxer/cli/launch.py says why). `pip install` writes pip's own again.
import sys
sys.path.append({root!r})
try:
    from sandboxer.cli.launch import run
except ModuleNotFoundError as e:
    if e.name not in ("sandboxer", "sandboxer.cli", "sandboxer.cli.launch"):
        raise
    sys.stderr.write("sandboxer: this command runs the checkout in %s, which holds no "
                     "sand-boxer now; run `python -m sandboxer.cli.launch` (scripts/setup.sh) "
                     "in the checkout to use, or `pip install` it\\n" % {root!r})
    sys.exit(1)
sys.exit(run({root!r}))
"""


def source_root() -> Path | None:
    """The directory holding this package, when it is not a site-packages directory."""
    import site
    import sysconfig
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sites = {Path(p).resolve() for p in (*site.getsitepackages(), site.getusersitepackages(),
                                         sysconfig.get_path("purelib"),
                                         sysconfig.get_path("platlib"))}
    return None if root in sites else root


def install(scripts: Path, python: str, root: Path) -> Path:
    """Write ``scripts/sandboxer`` (mode 0755) for ``python`` and the package in ``root``;
    the file is replaced whole, so a command running meanwhile reads the old or the new."""
    import os
    import tempfile

    for value in (python, str(root)):
        if not value.startswith("/") or any(c in value for c in "\n\r"):
            raise ValueError(f"not an absolute path on one line: {value!r}")
    shebang = f"#!{python} -S"
    # The kernel splits a #! line at its first blank and cuts it at 255 bytes (older ones
    # and other systems at 127): either would run something else, or drop -S.
    if any(c.isspace() for c in python) or len(shebang.encode()) > SHEBANG_MAX:
        raise ValueError(f"the interpreter's path cannot start a #! line: {python!r} "
                         f"(blanks, or longer than {SHEBANG_MAX - 5} bytes)")
    target = scripts / "sandboxer"
    fd, tmp = tempfile.mkstemp(prefix=".sandboxer-", dir=scripts)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(TEMPLATE.format(python=python, root=str(root)))
        os.chmod(tmp, 0o755)  # noqa: S103 - a command on PATH: everyone may run it
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    return target


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import sysconfig
    from pathlib import Path

    ap = argparse.ArgumentParser(
        prog="python -m sandboxer.cli.launch",
        description="Write the sandboxer command that starts Python without site "
        "(src/sandboxer/cli/launch.py), for a source checkout.")
    ap.add_argument("--scripts", type=Path, default=Path(sysconfig.get_path("scripts")),
                    help="where to write it (default: this interpreter's scripts dir)")
    opts = ap.parse_args(argv)
    root = source_root()
    if root is None:
        sys.stdout.write("sandboxer is installed in site-packages: pip's command stays\n")
        return 0
    try:
        target = install(opts.scripts, sys.executable, root)
    except ValueError as e:  # pip's command works as it did
        sys.stdout.write(f"pip's command stays: {e}\n")
        return 0
    sys.stdout.write(f"wrote {target} (python -S, package from {root})\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
