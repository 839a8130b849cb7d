"""Rendering the dashboard's pages: Jinja2 templates shipped in the package, autoescaped,
and the headers every page gets (no caching, a strict Content-Security-Policy: only this
server's own script and style, no inline code, no frames)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

if TYPE_CHECKING:
    from jinja2 import Environment

    from sandboxer.api.web.session import Viewer

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-store",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
           "X-Frame-Options": "DENY"}
NAV = (("/", "Sandboxes"), ("/events", "Events"), ("/targets", "Targets"),
       ("/pools", "Pools"), ("/snapshots", "Snapshots"))


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def remaining(value: str | None, now: datetime | None = None) -> str:
    """A lease's time left as the page shows it without JavaScript: ``1h 04m``,
    ``3m 20s``, ``expired``; ``—`` without one."""
    end = _parse(value)
    if end is None:
        return "—"
    left = int((end - (now or datetime.now(UTC))).total_seconds())
    if left <= 0:
        return "expired"
    days, rest = divmod(left, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s"


def shown_time(value: str | None) -> str:
    """An ISO time as ``2026-12-02 01:47:19 UTC``."""
    when = _parse(value)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if when else "—"


@cache
def environment() -> Environment:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(loader=PackageLoader("sandboxer.api.web", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["remaining"] = remaining
    env.filters["shown_time"] = shown_time
    return env


def page(request: Request, template: str, who: Viewer | None, status: int = 200,
         **context: Any) -> HTMLResponse:
    html = environment().get_template(template).render(
        request_path=request.url.path, who=who, nav=NAV, **context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def redirect(location: str) -> Response:
    """303 See Other: after a form, the browser GETs ``location``."""
    return RedirectResponse(location, status_code=303, headers=HEADERS)
