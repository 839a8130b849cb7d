"""The dashboard of `sandboxer serve` (docs/api.md#the-dashboard): server-rendered pages
at ``/`` over the same service and authorization as the API.

``session`` (sign-in cookie, CSRF), ``render`` (templates, headers), ``pages`` (GET),
``actions`` (POST forms), ``snapshots``, ``stream`` (server-sent events); the templates
and the one hand-written script and style sheet ship in the package (no external assets).
"""

from __future__ import annotations

import asyncio
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import Response

from sandboxer.api.web.session import SignInNeeded

STATIC = {"dash.js": "text/javascript; charset=utf-8", "dash.css": "text/css; charset=utf-8"}


def install(app: FastAPI) -> None:
    """Add the dashboard's routes to the API application."""
    from urllib.parse import quote

    from sandboxer.api.web import actions, auth, pages, snapshots, stream
    from sandboxer.api.web.render import redirect

    app.state.stopping = asyncio.Event()  # set when the server stops: streams end
    for module in (auth, pages, actions, snapshots, stream):
        app.include_router(module.router)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC:
            return Response("not found\n", status_code=404, media_type="text/plain")
        body = resources.files("sandboxer.api.web").joinpath("static", name).read_bytes()
        return Response(body, media_type=STATIC[name],
                        headers={"Cache-Control": "no-cache",
                                 "X-Content-Type-Options": "nosniff"})

    @app.exception_handler(SignInNeeded)
    async def sign_in_first(request: Request, _e: SignInNeeded) -> Response:
        target = request.url.path if request.method == "GET" else "/"
        if request.method == "GET" and request.url.query:
            target += "?" + request.url.query
        return redirect(f"/sign-in?next={quote(target, safe='')}")
