"""HTTP edge of the console: the page, the JSON it polls, and the way a browser signs in.

A browser cannot set an `X-API-Key` header on a page load, so an ops key may also come once as
`/?key=…` (answered with a redirect that drops it from the address bar) or as `POST /v1/session`;
either way it is kept in an HttpOnly, SameSite=Strict cookie, which then stands for the header.
"""

from html import escape
from importlib.resources import files
from typing import Annotated, Any, Literal

from crm_shared.auth import Principal, presented_key, require_role
from crm_shared.events import Identifier
from crm_shared.web import ApiError, install_common, service_lifespan
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from ops_console import SERVICE_NAME

Dimension = Literal["value_tier", "persona", "cluster"]


class SessionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=256)


class CookieKey:
    """Pure ASGI: a request without an API key header presents the key kept in the console's cookie."""

    def __init__(self, app: ASGIApp, cookie_name: str) -> None:
        self.app = app
        self.cookie_prefix = cookie_name.encode() + b"="

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            names = {name for name, _ in headers}
            if b"x-api-key" not in names and b"authorization" not in names:
                for name, value in headers:
                    if name == b"cookie":
                        for part in value.split(b";"):
                            part = part.strip()
                            if part.startswith(self.cookie_prefix) and len(part) > len(self.cookie_prefix):
                                scope = {**scope, "headers": [*headers, (b"x-api-key", part[len(self.cookie_prefix):])]}
                                break
        await self.app(scope, receive, send)


def create_app(service: Any) -> FastAPI:
    settings = service.settings
    app = FastAPI(title="Retail CRM — ops console", version="0.1.0", lifespan=service_lifespan(service),
                  description="One page for operations: live sales per store and hour, segment sizes over time, top "
                              "basket rules, stock below reorder point and open purchase orders, campaign reports "
                              "with uplift, consumer lag per service. Gathered from the services' APIs; ops key.")
    app.state.keyring = service.keyring
    handlers = service.handlers
    install_common(app, service=SERVICE_NAME, readiness=service.readiness_checks())
    app.add_middleware(CookieKey, cookie_name=settings.cookie_name)
    ops = require_role("ops")
    page = files("ops_console").joinpath("console.html").read_text(encoding="utf-8")

    def principal_of(request: Request, key: str | None) -> Principal | None:
        return service.keyring.resolve(key) if key else None

    def with_cookie(response: Response, key: str) -> Response:
        response.set_cookie(settings.cookie_name, key, max_age=settings.cookie_max_age_seconds, httponly=True,
                            samesite="strict", secure=settings.cookie_secure, path="/")
        return response

    def sign_in_page(status: int, message: str) -> HTMLResponse:
        return HTMLResponse(SIGN_IN.replace("{message}", escape(message)), status_code=status)

    @app.get("/", tags=["console"], response_class=HTMLResponse, summary="The console (ops key: header, cookie or ?key= once)",
             responses={401: {"description": "Sign-in page"}, 403: {"description": "Not an ops key"}})
    async def console(request: Request, key: Annotated[str | None, Query(max_length=256)] = None) -> Response:
        if key is not None:  # a key in the address: remember it in the cookie and take it out of the address
            principal = principal_of(request, key)
            if principal is None or principal.role != "ops":
                return sign_in_page(401 if principal is None else 403, "That key is not an ops key.")
            return with_cookie(RedirectResponse("/", status_code=303), key)
        principal = principal_of(request, presented_key(request))
        if principal is None:
            return sign_in_page(401, "")
        if principal.role != "ops":
            return sign_in_page(403, f"A {principal.role} key may not open the ops console.")
        return HTMLResponse(page.replace("{poll_ms}", str(int(settings.poll_seconds * 1000))),
                            headers={"Cache-Control": "no-store"})

    @app.post("/v1/session", tags=["console"], status_code=204, summary="Sign in: keep an ops key in an HttpOnly cookie",
              responses={401: {"description": "Unknown key"}, 403: {"description": "Not an ops key"}})
    async def sign_in(body: SessionIn, request: Request) -> Response:
        principal = principal_of(request, body.key)
        if principal is None:
            raise ApiError(401, "unauthorized", "key", "unknown API key")
        if principal.role != "ops":
            raise ApiError(403, "forbidden", "key", f"a {principal.role} key may not open the ops console")
        return with_cookie(Response(status_code=204), body.key)

    @app.delete("/v1/session", tags=["console"], status_code=204, summary="Sign out: forget the cookie")
    async def sign_out() -> Response:
        response = Response(status_code=204)
        response.delete_cookie(settings.cookie_name, path="/", httponly=True, samesite="strict",
                               secure=settings.cookie_secure)
        return response

    @app.get("/v1/overview", tags=["console"], summary="Every panel's figures (what the page polls)")
    async def overview(_: Annotated[Principal, Depends(ops)],
                       store: Annotated[Identifier | None, Query(description="one store; the chain when absent")] = None,
                       dimension: Annotated[Dimension, Query(description="segment sizes over time of")] = "value_tier",
                       ) -> Any:
        return await handlers.overview(store, dimension)

    return app


SIGN_IN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Retail CRM — ops console: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font:15px system-ui,sans-serif;margin:4rem auto;max-width:26rem;color:#1d2733}
input,button{font:inherit;padding:.4rem .6rem}input{width:100%;box-sizing:border-box;margin:.5rem 0}
.message{color:#b42318}</style></head>
<body><h1>Ops console</h1><p>Sign in with an ops API key (outside production: <code>dev-ops</code>).</p>
<p class="message" id="message">{message}</p>
<form id="sign-in"><label>API key<input id="key" type="password" autocomplete="off" required></label>
<button type="submit">Sign in</button></form>
<script>
document.getElementById('sign-in').addEventListener('submit', async (event) => {
  event.preventDefault();
  const response = await fetch('/v1/session', {method: 'POST', headers: {'content-type': 'application/json'},
    body: JSON.stringify({key: document.getElementById('key').value})});
  if (response.ok) { window.location.replace('/'); return; }
  const body = await response.json().catch(() => ({}));
  document.getElementById('message').textContent = (body.detail && body.detail[0] && body.detail[0].reason) || 'refused';
});
</script></body></html>
"""
