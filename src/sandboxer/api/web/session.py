"""Who is looking at the dashboard: the bearer token kept in a session cookie, and CSRF.

Signing in posts a bearer token (`sandboxer tokens add ACTOR`); it is kept in the cookie
``sandboxer_session`` (HttpOnly, SameSite=Strict, Path=/, Secure when served over TLS, no
Max-Age: it ends with the browser session or at sign-out) and checked on every request by
the API's own ``authenticate_on_loop``, so a removed token ends the session within the
API's token cache bound, and nothing is kept in a replica's memory (any replica answers).

Every form that changes something carries a CSRF token derived from the session's token
(an HMAC keyed by it), which only a page rendered for that session knows; the request's
Origin, when the browser sends one, must be this server's. The sign-in form itself is
guarded by a random cookie and the same value in the form (a login CSRF would sign a
victim in as someone else).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from fastapi import Request
from fastapi.responses import Response

from sandboxer.access import Caller
from sandboxer.api.service import Service
from sandboxer.errors import Forbidden, InvalidInput

COOKIE = "sandboxer_session"
SIGN_IN_COOKIE = "sandboxer_sign_in"
MAX_FORM = 16_384  # a dashboard form is a few short fields
_CSRF_MESSAGE = b"sandboxer dashboard csrf v1"


@dataclass(frozen=True)
class Viewer:
    """The signed-in caller and the CSRF token of its forms."""

    caller: Caller
    csrf: str


class SignInNeeded(Exception):
    """No valid session: a page answers with the sign-in page (a redirect)."""


def csrf_for(token: str) -> str:
    return hmac.new(token.encode(), _CSRF_MESSAGE, hashlib.sha256).hexdigest()


def service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


async def viewer(request: Request) -> Viewer:
    """The dashboard's dependency: the caller of the session cookie's token, or
    SignInNeeded (also when the token was removed meanwhile)."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise SignInNeeded
    found = await service(request).authenticate_on_loop(token)
    if found is None:
        raise SignInNeeded
    return Viewer(caller=found, csrf=csrf_for(token))


def secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session(response: Response, request: Request, token: str) -> None:
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/",
                        secure=secure(request))
    response.delete_cookie(SIGN_IN_COOKIE, path="/sign-in")


def clear_session(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                           secure=secure(request))


def sign_in_nonce(request: Request) -> str:
    """The sign-in form's guard: the browser's sign-in cookie, or a new random value."""
    return request.cookies.get(SIGN_IN_COOKIE) or secrets.token_urlsafe(24)


def keep_nonce(response: Response, request: Request, nonce: str) -> None:
    response.set_cookie(SIGN_IN_COOKIE, nonce, httponly=True, samesite="strict",
                        path="/sign-in", secure=secure(request))


async def form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the first value of each), after the same-origin
    check; InvalidInput for a body that is not one."""
    same_origin(request)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise InvalidInput("the dashboard takes urlencoded forms only",
                           hint="submit the form from the page")
    body = await request.body()
    if len(body) > MAX_FORM:
        raise InvalidInput(f"the form is over {MAX_FORM} bytes")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True,
                          max_num_fields=32, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidInput("the form could not be read") from e
    return {k: v[0] for k, v in fields.items()}


def same_origin(request: Request) -> None:
    """Refuse a cross-site submission: an Origin (sent by browsers on POST) that is not
    this server's."""
    origin = request.headers.get("origin")
    if origin is None:  # not a browser's form; the CSRF token still has to match
        return
    parts = urlsplit(origin)
    if parts.scheme != request.url.scheme or parts.netloc != request.url.netloc:
        raise Forbidden("this form was sent from another site",
                        hint="submit it from the dashboard's own page")


def check_csrf(fields: dict[str, str], who: Viewer) -> None:
    if not hmac.compare_digest(fields.get("csrf", ""), who.csrf):
        raise Forbidden("the form's CSRF token is missing or stale",
                        hint="reload the page and submit it again")
