"""``site``, loaded late: for the ``sandboxer`` command that starts Python with ``-S``
(cli/launch.py says why it does).

Such a process loads ``site`` at whichever comes first:
- an import that nothing on ``sys.path`` satisfies (``SiteOnMiss``), that is, the first
  import of pydantic, yaml or a plugin;
- a look at the installed distributions (``ensure_site``, before any entry-point scan):
  plugins' metadata lies in site-packages, which ``-S`` leaves off ``sys.path``.

Then ``site.main()`` does what a normal start would have done: it adds site-packages and
runs the ``.pth`` files. Standard library only.
"""

from __future__ import annotations

import sys

# Not typing's: it, collections.abc and types cost the command's first line ~5 ms before
# it starts the local service (sandboxer.early); type checkers read this one the same.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

# Misses that are probes of the standard library itself: copy and pickle look for
# Jython's org.python.core. Loading site in the middle of such an import would run the
# .pth files while dataclasses or copy is half made.
_PROBES = frozenset({"org"})


class SiteOnMiss:
    """Last on ``sys.meta_path``: when no other finder finds a module, load ``site`` once
    and look for the module again with every finder that ``site`` leaves. A missing
    standard library module (``ntpath`` tries ``_winapi``) stays missing: ``site`` adds
    no standard library."""

    def __init__(self, root: str) -> None:
        self.root = root  # the package's directory, appended to sys.path before site ran

    def find_spec(self, name: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        top = name.partition(".")[0]
        if top in sys.stdlib_module_names or top in _PROBES:
            return None
        self.load()
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)  # a legacy finder has none
            spec: ModuleSpec | None = None if find is None else find(name, path, target)
            if spec is not None:
                return spec
        return None

    def load(self) -> None:
        """Run ``site.main()`` now (once) and put the package's directory back behind
        site-packages, where an editable install's ``.pth`` file puts it."""
        if self not in sys.meta_path:
            return
        sys.meta_path.remove(self)
        import site

        site.main()
        if self.root in sys.path:
            sys.path.remove(self.root)
            sys.path.append(self.root)


def install(root: str) -> None:
    """In a process started with ``-S``: load ``site`` late (see the module docstring)."""
    if sys.flags.no_site and not any(isinstance(f, SiteOnMiss) for f in sys.meta_path):
        sys.meta_path.append(SiteOnMiss(root))


def ensure_site() -> None:
    """Load ``site`` now, if this process deferred it: before a look at what is
    installed."""
    for finder in list(sys.meta_path):
        if isinstance(finder, SiteOnMiss):
            finder.load()
