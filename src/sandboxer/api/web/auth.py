"""Signing in and out of the dashboard (the session cookie: api/web/session.py)."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response

from sandboxer.api.web import session
from sandboxer.api.web.render import page, redirect
from sandboxer.errors import SandboxerError

router = APIRouter(include_in_schema=False)


def local_path(target: str | None) -> str:
    """Where to go after signing in: a path of this server only (never another site)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


def _form_page(request: Request, target: str, error: str | None = None,
               status: int = 200) -> Response:
    nonce = session.sign_in_nonce(request)
    response = page(request, "sign_in.html", None, status, next=target, nonce=nonce,
                    error=error)
    session.keep_nonce(response, request, nonce)
    return response


@router.get("/sign-in")
async def sign_in_page(request: Request, next: str | None = None) -> Response:
    target = local_path(next)
    try:
        await session.viewer(request)
    except session.SignInNeeded:
        return _form_page(request, target)
    return redirect(target)


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    try:
        fields = await session.form(request)
    except SandboxerError as e:
        return _form_page(request, "/", e.message, e.http_status)
    target = local_path(fields.get("next"))
    nonce = request.cookies.get(session.SIGN_IN_COOKIE, "")
    if not nonce or not hmac.compare_digest(fields.get("nonce", ""), nonce):
        return _form_page(request, target, "the sign-in form expired; sign in again", 403)
    token = fields.get("token", "").strip()
    found = await session.service(request).authenticate_on_loop(token) if token else None
    if found is None:
        return _form_page(request, target, "that token is not valid: ask an operator for "
                          "one (`sandboxer tokens add ACTOR`)", 401)
    response = redirect(target)
    session.set_session(response, request, token)
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    try:
        who = await session.viewer(request)
        session.check_csrf(await session.form(request), who)
    except session.SignInNeeded:
        pass  # nothing to end
    except SandboxerError as e:
        return page(request, "error.html", None, e.http_status, error=e)
    response = redirect("/sign-in")
    session.clear_session(response, request)
    return response
