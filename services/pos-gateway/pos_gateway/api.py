"""HTTP edge of pos-gateway: parse, call one handler, shape the response."""


import inspect
import logging
import math
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import orjson
from crm_shared.auth import Principal, Role, require_role
from crm_shared.events import Identifier, Sale
from crm_shared.money import Money
from crm_shared.web import HTTP_LATENCY, HTTP_REQUESTS, ApiError, field_errors, install_common, service_lifespan
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, ValidationError
from starlette.types import Receive, Scope, Send

from pos_gateway import SERVICE_NAME
from pos_gateway.domain import Refusal
from pos_gateway.rate_limit import KeyRateLimiter, RateLimit
from pos_gateway.store import Accepted, LedgerUnavailable

log = logging.getLogger(__name__)

DirectEndpoint = Callable[[Request], Coroutine[Any, Any, Response]]
KeyCheck = Callable[[Request], Coroutine[Any, Any, Principal]]


class RateLimited(Exception):
    def __init__(self, retry_after: float, limit: RateLimit) -> None:
        super().__init__("rate limit")
        self.retry_after, self.limit = retry_after, limit


def key_check(roles: tuple[Role, ...], limiter: KeyRateLimiter | None) -> KeyCheck:
    """401 without a valid key, 403 for a role that may not, 429 when the key is over its rate."""
    check_role = require_role(*roles)
    if limiter is None:
        return check_role

    async def dependency(request: Request) -> Principal:
        principal = await check_role(request)
        wait = limiter.take(principal.key_id, time.monotonic())
        if wait > 0:
            raise RateLimited(wait, limiter.limit)
        return principal

    return dependency


class SaleAccepted(BaseModel):
    sale_id: str
    event_id: uuid.UUID
    status: Literal["accepted"] = "accepted"


class FieldError(BaseModel):
    field: str
    reason: str


class ErrorResponse(BaseModel):
    error: str
    detail: list[FieldError]


class SaleBatch(BaseModel):
    sales: list[dict[str, Any]] = Field(description="Up to 500 sales, each shaped like the body of POST /v1/sales")


class BatchItemResult(BaseModel):
    index: int
    sale_id: str | None
    http_status: int = Field(description="What POST /v1/sales would have answered for this sale")
    status: Literal["accepted", "duplicate", "rejected", "conflict", "forbidden"]
    event_id: uuid.UUID | None = None
    errors: list[FieldError] = []


class BatchResponse(BaseModel):
    accepted: int
    duplicates: int
    refused: int
    results: list[BatchItemResult]


class StoredSale(BaseModel):
    sale: Sale
    event_id: uuid.UUID
    accepted_at: datetime
    total: Money
    published: bool = Field(description="False while the sale waits in the outbox for the broker")


class HourFiguresOut(BaseModel):
    hour: datetime
    sales: int
    returns: int
    revenue: Money


class StoreFigures(BaseModel):
    store_id: str
    sales: int
    returns: int
    revenue: Money
    hours: list[HourFiguresOut]


class TopSku(BaseModel):
    sku: str
    quantity: int


class LiveFigures(BaseModel):
    as_of: datetime | None = Field(description="Latest event time seen; the window ends here, not at wall-clock now")
    window_hours: int
    stores: list[StoreFigures]
    top_skus: list[TopSku]


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in {
        400: "Body is not valid JSON", 401: "Missing or unknown API key", 403: "Key's role or store does not allow this",
        409: "Sale id already recorded with different contents", 413: "Body over the size limit",
        415: "Body is not application/json", 422: "A field is invalid (the response names it)",
        429: "Too many requests with this key: `Retry-After` says when to try again",
        503: "Ledger unavailable: the sale was NOT recorded, retry"}.items()
}

SALE_BODY_SCHEMA: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Sale"}}}}
}
BATCH_BODY_SCHEMA: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["sales"], "additionalProperties": False,
        "properties": {"sales": {"type": "array", "maxItems": 500, "items": {"$ref": "#/components/schemas/Sale"}}}}}}}
}


async def read_json(request: Request, max_bytes: int) -> Any:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", "content-type",
                       f"must be application/json, got {content_type or 'nothing'!r}")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, "payload_too_large", "body", f"is {declared} bytes; the limit is {max_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError(413, "payload_too_large", "body", f"is over the limit of {max_bytes} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", "body", f"is not valid JSON: {exc}") from exc


def parse_sale(data: Any) -> Sale | Refusal:
    if not isinstance(data, dict):
        return Refusal(422, "validation_failed", "body", "must be a JSON object (one sale)")
    try:
        return Sale.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(exc)
        return Refusal(422, "validation_failed", errors[0]["field"], errors[0]["reason"],
                       tuple((e["field"], e["reason"]) for e in errors[1:]))


def refusal_response(refusal: Refusal) -> JSONResponse:
    return JSONResponse({"error": refusal.error, "detail": refusal.details()}, status_code=refusal.status)


class DirectRoute(APIRoute):
    """A route whose endpoint takes the request and answers with a `Response` itself.

    It is documented like any other route (its decorator's models, responses and `openapi_extra`),
    but served without FastAPI's per-request dependency solving and response handling: on the
    sales hot path those cost about as much as the rest of the HTTP layer together.
    """

    def get_route_handler(self) -> DirectEndpoint:
        endpoint: DirectEndpoint = self.endpoint
        return endpoint


class GatewayApp(FastAPI):
    """The gateway's app: the terminals' ingest routes are dispatched before Starlette's stack.

    Every other request goes through FastAPI as usual. An ingest request is answered by its
    `DirectRoute` endpoint without the middleware stack and the route search (measured: those cost
    over a tenth of the API process's CPU at full load), with the same error handlers and the same
    request metrics as everything else.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.direct_endpoints: dict[tuple[str, str], DirectEndpoint] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self.direct_endpoints.get((scope["method"], scope["path"]))
            if endpoint is not None:
                await self._serve_direct(endpoint, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _serve_direct(self, endpoint: DirectEndpoint, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        scope["app"] = self
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except Exception as exc:
            response = await self._handle_error(request, exc)
        await response(scope, receive, send)
        HTTP_REQUESTS.labels(SERVICE_NAME, scope["path"], scope["method"], str(response.status_code)).inc()
        HTTP_LATENCY.labels(SERVICE_NAME, scope["path"]).observe(time.perf_counter() - started)

    async def _handle_error(self, request: Request, exc: Exception) -> Response:
        for kind in type(exc).__mro__:  # the most specific handler, as Starlette's lookup does
            handler = self.exception_handlers.get(kind)
            if handler is not None:
                answer = handler(request, exc)  # Starlette allows plain functions as handlers too
                response: Response = await answer if inspect.isawaitable(answer) else answer
                return response
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return PlainTextResponse("Internal Server Error", status_code=500)


def create_app(gateway: Any) -> FastAPI:
    """`gateway` is the object `bootstrap.build()` returns; the app starts and stops it."""

    app = GatewayApp(
        title="Retail CRM — pos-gateway", version="1.0.0", lifespan=service_lifespan(gateway),
        description=("Takes sales and returns from store terminals. A `202` means the sale is durable in the ledger "
                     "and will be published on `pos.sales.v1`; posting the same sale again is harmless. "
                     "Authenticate with `X-API-Key` (or `Authorization: Bearer`)."),
    )
    app.state.keyring = gateway.keyring
    settings = gateway.settings
    handlers = gateway.handlers
    install_common(app, service=SERVICE_NAME, readiness=gateway.readiness_checks())

    limit = RateLimit(settings.rate_limit_per_second, settings.rate_limit_burst)
    limiter = KeyRateLimiter(limit) if limit.per_second > 0 else None

    @app.exception_handler(RateLimited)
    async def _rate_limited(_: Request, exc: RateLimited) -> JSONResponse:
        body = {"error": "too_many_requests",
                "detail": [{"field": "x-api-key", "reason": f"over {exc.limit.per_second:g} requests/s "
                                                           f"(burst {exc.limit.burst}) for this key"}],
                "limit": exc.limit.describe(), "retry_after_seconds": round(exc.retry_after, 3)}
        return JSONResponse(body, status_code=429, headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))})

    # 401 without a valid key, 403 for a role that may not, 429 over the key's rate; before the body is read.
    terminal = key_check(("pos", "ops"), limiter)
    reader = key_check(("pos", "ops"), limiter)
    ingest = APIRouter(route_class=DirectRoute)  # the terminals' hot path

    @ingest.post("/v1/sales", status_code=202, tags=["sales"], summary="Record one sale or return",
              response_model=SaleAccepted, openapi_extra=SALE_BODY_SCHEMA,
              responses={200: {"model": SaleAccepted, "description": "Already recorded: the original result"}, **ERRORS})
    async def post_sale(request: Request) -> Any:
        principal = await terminal(request)  # called here: a DirectRoute solves no dependencies
        parsed = parse_sale(await read_json(request, settings.max_body_bytes))
        if isinstance(parsed, Refusal):
            return refusal_response(parsed)
        try:
            outcome = await handlers.record_sale(parsed, principal)
        except LedgerUnavailable as exc:
            raise ApiError(503, "ledger_unavailable", "sale", "the sale was not recorded; retry") from exc
        if isinstance(outcome, Refusal):
            return refusal_response(outcome)
        body = {"sale_id": outcome.sale_id, "event_id": str(outcome.event_id), "status": "accepted"}
        return Response(orjson.dumps(body), status_code=202 if outcome.new else 200, media_type="application/json")

    @ingest.post("/v1/sales/batch", tags=["sales"], summary="Record up to 500 sales (offline terminal catch-up)",
              response_model=BatchResponse, openapi_extra=BATCH_BODY_SCHEMA, responses=ERRORS)
    async def post_batch(request: Request) -> Any:
        principal = await terminal(request)
        data = await read_json(request, settings.max_body_bytes)
        if not isinstance(data, dict) or set(data) != {"sales"} or not isinstance(data["sales"], list):
            raise ApiError(422, "validation_failed", "sales", "body must be {\"sales\": [...]} and nothing else")
        if len(data["sales"]) > settings.max_batch_sales:
            raise ApiError(422, "validation_failed", "sales",
                           f"has {len(data['sales'])} sales; at most {settings.max_batch_sales} per batch")
        items = [parse_sale(item) for item in data["sales"]]
        try:
            outcomes = await handlers.record_batch(items, principal)
        except LedgerUnavailable as exc:
            raise ApiError(503, "ledger_unavailable", "sales", "no sale of this batch was recorded; retry") from exc
        results = []
        for index, (raw, outcome) in enumerate(zip(data["sales"], outcomes, strict=True)):
            sale_id = raw.get("sale_id") if isinstance(raw, dict) and isinstance(raw.get("sale_id"), str) else None
            if isinstance(outcome, Accepted):
                results.append(BatchItemResult(index=index, sale_id=outcome.sale_id, event_id=outcome.event_id,
                                               http_status=202 if outcome.new else 200,
                                               status="accepted" if outcome.new else "duplicate"))
            else:
                status = {409: "conflict", 403: "forbidden"}.get(outcome.status, "rejected")
                results.append(BatchItemResult(index=index, sale_id=sale_id, http_status=outcome.status, status=status,  # type: ignore[arg-type]
                                               errors=[FieldError.model_validate(d) for d in outcome.details()]))
        answer = BatchResponse(accepted=sum(r.status == "accepted" for r in results),
                               duplicates=sum(r.status == "duplicate" for r in results),
                               refused=sum(r.http_status >= 400 for r in results), results=results)
        return Response(answer.model_dump_json(), media_type="application/json")

    app.include_router(ingest)  # routed (and documented) as usual, but served directly:
    app.direct_endpoints.update({("POST", "/v1/sales"): post_sale, ("POST", "/v1/sales/batch"): post_batch})

    @app.get("/v1/sales/{store_id}/{sale_id}", tags=["sales"], summary="A recorded sale, as the ledger holds it",
             response_model=StoredSale,
             responses={404: {"model": ErrorResponse}, 401: ERRORS[401], 403: ERRORS[403], 429: ERRORS[429]})
    async def get_sale(store_id: Annotated[Identifier, Path()], sale_id: Annotated[Identifier, Path()],
                       principal: Annotated[Principal, Depends(reader)]) -> Any:
        found = await handlers.get_sale(store_id, sale_id, principal)
        if isinstance(found, Refusal):
            return refusal_response(found)
        return StoredSale(sale=Sale.model_validate(found["body"]), event_id=found["event_id"],
                          accepted_at=found["accepted_at"], total=Decimal(found["total"]),
                          published=found["unpublished"] == 0)

    @app.get("/v1/stats/live", tags=["stats"], response_model=LiveFigures,
             summary="Sales per store per hour and top SKUs over the last hours of event time",
             responses={401: ERRORS[401], 403: ERRORS[403], 429: ERRORS[429]})
    async def live_stats(principal: Annotated[Principal, Depends(reader)],
                         store_id: Annotated[Identifier | None, Query()] = None,
                         hours: Annotated[int, Query(ge=1, le=168)] = settings.live_stats_window_hours,
                         top: Annotated[int, Query(ge=1, le=100)] = 10) -> Any:
        figures = await handlers.live_figures(principal, store_id, hours, top)
        if isinstance(figures, Refusal):
            return refusal_response(figures)
        return figures

    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original_openapi()
        sale_schema = Sale.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(sale_schema.pop("$defs", {}))
        components["Sale"] = sale_schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
