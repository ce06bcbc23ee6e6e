"""HTTP edge of the segmenter: parse, call one handler or query, shape the response."""

from datetime import date
from typing import Annotated, Any, Literal

from crm_shared.auth import Principal, require_role
from crm_shared.events import Identifier
from crm_shared.web import ApiError, error_body, install_common, service_lifespan
from fastapi import Depends, FastAPI, Path, Query
from fastapi.responses import JSONResponse

from segmenter import SERVICE_NAME
from segmenter.baskets import TooManyItemsets
from segmenter.queries import PeriodOutOfRange, SegmentQueries, dimension_of

MAX_ITEMS_HELP = "items per rule, both sides; up to 10 (arules' maxlen) costs more on long wholesale baskets"
Sku = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]


def _dates(start: date | None, end: date | None) -> None:
    for name, value in (("from", start), ("to", end)):
        if value is not None and not 1990 <= value.year <= 2200:
            raise ApiError(422, "validation_failed", name, "must be between 1990 and 2200")
    if start is not None and end is not None and start > end:
        raise ApiError(422, "validation_failed", "from", "must not be after `to`")


def scoped(principal: Principal, store: str | None) -> None:
    """A pos key sees its own store's figures only (and not the chain's)."""
    if principal.role == "pos" and store != principal.scope:
        raise ApiError(403, "forbidden", "store", f"a pos key may only ask about its own store ({principal.scope})")


def create_app(service: Any) -> FastAPI:
    app = FastAPI(title="Retail CRM — segmenter", version="0.1.0", lifespan=service_lifespan(service),
                  description="Value tiers (RFM map), personas and behaviour clusters learned online on every profile "
                              "change, churn risk and dormancy by each member's own rhythm, market-basket rules kept "
                              "incrementally per store and chain-wide, product analytics. Event time throughout.")
    app.state.keyring = service.keyring
    handlers = service.handlers
    queries = SegmentQueries(service.engine, handlers)
    install_common(app, service=SERVICE_NAME, readiness=service.readiness_checks())
    reader = require_role("ops", "marketing")
    staff = require_role("ops", "marketing", "pos")

    def known_segment(segment: str) -> str:
        dimension = dimension_of(segment, service.settings.n_clusters)
        if dimension is None:
            raise ApiError(404, "not_found", "segment_id", f"no segment {segment!r}; see GET /v1/segments")
        return dimension

    @app.get("/v1/segments", tags=["segments"], summary="Every segment of every dimension, with its size and rule")
    async def list_segments(_: Annotated[Principal, Depends(reader)]) -> Any:
        return await queries.segments()

    @app.get("/v1/segment-sizes", tags=["segments"], summary="Every segment's size per event day, for one dimension")
    async def segment_sizes(_: Annotated[Principal, Depends(reader)],
                            dimension: Annotated[Literal["value_tier", "persona", "cluster"], Query()] = "value_tier",
                            days: Annotated[int, Query(ge=1, le=3660)] = 90) -> Any:
        return await queries.sizes_over_time(dimension, days)

    @app.get("/v1/segments/{segment_id}", tags=["segments"],
             summary="A segment: size, trend, the features that set it apart, example members")
    async def get_segment(segment_id: Annotated[str, Path(max_length=40)], _: Annotated[Principal, Depends(reader)]) -> Any:
        return await queries.segment(segment_id, known_segment(segment_id))

    @app.get("/v1/segments/{segment_id}/members", tags=["segments"], summary="Member ids in a segment (keyset pages)")
    async def get_segment_members(segment_id: Annotated[str, Path(max_length=40)],
                                  _: Annotated[Principal, Depends(reader)],
                                  after: Annotated[Identifier | None, Query(description="last id of the previous page")] = None,
                                  limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> Any:
        return await queries.segment_members(segment_id, known_segment(segment_id), after, limit)

    @app.get("/v1/members/{member_id}/segments", tags=["segments"],
             summary="A member's segments, churn risk, expected next visit and segment history")
    async def member_segments(member_id: Annotated[Identifier, Path()], _: Annotated[Principal, Depends(reader)]) -> Any:
        found = await queries.member(member_id)
        if found is None:
            return JSONResponse(error_body("not_found", "member_id", f"no profile seen for member {member_id!r}"), 404)
        return found

    @app.get("/v1/rules", tags=["baskets"], summary="Association rules above the thresholds, strongest first")
    async def rules(principal: Annotated[Principal, Depends(staff)],
                    min_support: Annotated[float, Query(gt=0, le=1)] = 0.01,
                    min_confidence: Annotated[float, Query(ge=0, le=1)] = 0.3,
                    min_lift: Annotated[float, Query(ge=0, le=1e9)] = 0.0,
                    antecedent: Annotated[list[str] | None, Query(max_length=10, description="SKUs on the left side")] = None,
                    store: Annotated[Identifier | None, Query(description="a store id; chain-wide when absent")] = None,
                    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
                    max_items: Annotated[int, Query(ge=2, le=10, description=MAX_ITEMS_HELP)] = 3) -> Any:
        scoped(principal, store)
        wanted = frozenset(antecedent) if antecedent else None
        try:
            found, baskets = await handlers.rules(scope=store, min_support=min_support, min_confidence=min_confidence,
                                                  min_lift=min_lift, antecedent=wanted, limit=limit, max_items=max_items)
        except TooManyItemsets as exc:
            raise ApiError(422, "validation_failed", "min_support", str(exc)) from exc
        return {"scope": store or "chain", "baskets": baskets, "window_days": handlers.settings.basket_window_days,
                "rules": [{"antecedents": sorted(r.antecedents), "consequent": r.consequent, "support": r.support,
                           "confidence": r.confidence, "lift": r.lift, "baskets": r.baskets} for r in found]}

    @app.get("/v1/products/{sku}/bought-with", tags=["baskets"], summary="Products most often in the same basket")
    async def bought_with(sku: Sku, principal: Annotated[Principal, Depends(staff)],
                          store: Annotated[Identifier | None, Query()] = None,
                          limit: Annotated[int, Query(ge=1, le=500)] = 10) -> Any:
        scoped(principal, store)
        found, own = await handlers.bought_with(sku, store, limit)
        return {"sku": sku, "scope": store or "chain", "baskets_with_sku": own,
                "bought_with": [{"sku": b.sku, "baskets": b.baskets, "support": b.support, "confidence": b.confidence,
                                 "lift": b.lift} for b in found]}

    @app.get("/v1/products/top", tags=["products"], summary="Best (or worst) sellers per store and period")
    async def top_products(principal: Annotated[Principal, Depends(staff)],
                           store: Annotated[Identifier | None, Query()] = None,
                           start: Annotated[date | None, Query(alias="from")] = None,
                           end: Annotated[date | None, Query(alias="to")] = None,
                           days: Annotated[int, Query(ge=1, le=3660, description="period length when `from` is absent")] = 30,
                           by: Annotated[Literal["revenue", "quantity"], Query()] = "revenue",
                           order: Annotated[Literal["best", "worst"], Query()] = "best",
                           limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> Any:
        _dates(start, end)
        scoped(principal, store)
        try:
            return await queries.top_products(store_id=store, start=start, end=end, days=days, by=by,
                                              worst=order == "worst", limit=limit)
        except PeriodOutOfRange as exc:
            raise ApiError(422, "validation_failed", "from", str(exc)) from exc

    @app.get("/v1/products/slow", tags=["products"], summary="Slow movers: sold before, hardly or not lately")
    async def slow(principal: Annotated[Principal, Depends(staff)], store: Annotated[Identifier | None, Query()] = None,
                   days: Annotated[int, Query(ge=1, le=3660)] = 28,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> Any:
        scoped(principal, store)
        return await queries.slow_movers(store_id=store, days=days, limit=limit)

    @app.get("/v1/products/{sku}/seasonality", tags=["products"],
             summary="Seasonality index by month and weekday, and the trend")
    async def seasonality(sku: Sku, principal: Annotated[Principal, Depends(staff)],
                          store: Annotated[Identifier | None, Query()] = None) -> Any:
        scoped(principal, store)
        found = await queries.seasonality(sku, store)
        if found is None:
            return JSONResponse(error_body("not_found", "sku", f"no sales seen for {sku!r}"), 404)
        return found

    return app
