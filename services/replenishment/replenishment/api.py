"""HTTP edge of replenishment: parse, call one handler, shape the response."""

from datetime import date, datetime
from typing import Annotated, Any, Literal

from crm_shared.auth import Principal, require_role
from crm_shared.events import EARLIEST_YEAR, LATEST_YEAR, Identifier
from crm_shared.supply_events import GoodsReceipt, ReceiptLine, Sku, SupplierAck
from crm_shared.web import error_body, install_common, service_lifespan
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from replenishment import SERVICE_NAME
from replenishment.domain import Refused
from replenishment.edifact import render_orders


def _plausible_year(value: datetime) -> datetime:
    # Checked on the local year, as the Sale contract does: year 1 or 9999 overflows once converted
    # across time zones (PostgreSQL, event-time days), which used to be a 500.
    if not EARLIEST_YEAR <= value.year <= LATEST_YEAR:
        raise ValueError(f"year must be between {EARLIEST_YEAR} and {LATEST_YEAR}")
    return value


EventTime = Annotated[AwareDatetime, AfterValidator(_plausible_year)]


class ReceiptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    receipt_id: Identifier
    store_id: Identifier
    po_id: Identifier | None = None
    received_at: EventTime
    lines: list[ReceiptLine] = Field(min_length=1, max_length=2000)


class StockCount(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count_id: Identifier
    store_id: Identifier
    sku: Sku
    counted: int = Field(strict=True, ge=0, le=10_000_000)
    counted_at: EventTime


class AckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["accepted", "rejected"]
    reason: Annotated[str, StringConstraints(max_length=300, pattern=r"^[^\x00-\x1f\x7f]*$")] = ""
    at: EventTime | None = None


class ShipNotice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: EventTime | None = None


def _supplier_scope(principal: Principal) -> str | None:
    """A supplier key sees its own supplier id only; ops sees every supplier."""
    return principal.scope if principal.role == "supplier" else None


def create_app(service: Any) -> FastAPI:
    app = FastAPI(title="Retail CRM — replenishment", version="0.1.0", lifespan=service_lifespan(service),
                  description="Live stock per store × SKU from every sale, online daily demand forecasts in event "
                              "time, reorder points, purchase orders per supplier × store × cycle, the supplier view.")
    app.state.keyring = service.keyring
    handlers = service.handlers
    install_common(app, service=SERVICE_NAME, readiness=service.readiness_checks())
    staff = require_role("ops", "pos")
    ops_only = require_role("ops")
    supplier_or_ops = require_role("supplier", "ops")
    supplier_only = require_role("supplier")

    @app.exception_handler(Refused)
    async def _refused(_: Request, exc: Refused) -> JSONResponse:
        return JSONResponse(error_body(exc.error, exc.field, exc.reason), status_code=exc.status)

    def check_store(principal: Principal, store_id: str) -> None:
        if not principal.can_act_for_store(store_id):
            raise Refused(403, "forbidden", "store_id", f"this key is for store {principal.scope!r}")

    @app.get("/v1/stock/{store_id}/{sku}", tags=["stock"],
             summary="On hand, on order, forecast, reorder point and days of cover of one SKU at a store")
    async def stock_of(store_id: Annotated[Identifier, Path()], sku: Annotated[Sku, Path()],
                       principal: Annotated[Principal, Depends(staff)]) -> Any:
        check_store(principal, store_id)
        return await handlers.stock_view(store_id, sku)

    @app.get("/v1/stock", tags=["stock"], summary="Per store: how many SKUs are at or below their reorder point")
    async def stores_below(_: Annotated[Principal, Depends(ops_only)],
                           below: Annotated[Literal["reorder_point"], Query(description="only `reorder_point`")]) -> Any:
        return await handlers.stores_below_reorder_point()

    @app.get("/v1/stock/{store_id}", tags=["stock"], summary="SKUs of a store at or below their reorder point")
    async def stock_below(store_id: Annotated[Identifier, Path()], principal: Annotated[Principal, Depends(staff)],
                          below: Annotated[Literal["reorder_point"], Query(description="only `reorder_point`")],
                          limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> Any:
        check_store(principal, store_id)
        return await handlers.below_reorder_point(store_id, limit)

    @app.post("/v1/stock/counts", tags=["stock"], status_code=201,
              summary="A stock count: on hand is set to what was counted, the difference booked as shrinkage")
    async def count(body: StockCount, principal: Annotated[Principal, Depends(staff)]) -> Any:
        check_store(principal, body.store_id)
        return await handlers.count_stock(body.count_id, body.store_id, body.sku, body.counted, body.counted_at)

    @app.post("/v1/receipts", tags=["stock"], status_code=201,
              summary="A goods receipt (partial allowed; more than ordered is accepted and flagged)")
    async def goods_receipt(body: ReceiptIn, principal: Annotated[Principal, Depends(staff)]) -> Any:
        check_store(principal, body.store_id)
        return await handlers.receive_goods(GoodsReceipt.model_validate(body.model_dump()))

    @app.get("/v1/orders", tags=["orders"], summary="Purchase orders, newest first")
    async def orders(_: Annotated[Principal, Depends(ops_only)],
                     status: Annotated[Literal["open", "overdue", "all"], Query()] = "all",
                     store_id: Annotated[Identifier | None, Query()] = None,
                     supplier_id: Annotated[Identifier | None, Query()] = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
        return await handlers.orders(store_id=store_id, supplier_id=supplier_id, open_only=status == "open",
                                     overdue_only=status == "overdue", limit=limit)

    @app.get("/v1/orders/overdue", tags=["orders"], summary="Open orders past their expected delivery (event time)")
    async def overdue_orders(_: Annotated[Principal, Depends(ops_only)],
                             limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
        return await handlers.orders(overdue_only=True, limit=limit)

    @app.get("/v1/orders/{po_id}", tags=["orders"], summary="One purchase order with its lines")
    async def order(po_id: Annotated[Identifier, Path()], principal: Annotated[Principal, Depends(supplier_or_ops)]) -> Any:
        return await handlers.order(po_id, _supplier_scope(principal))

    @app.get("/v1/orders/{po_id}/edifact", tags=["orders"], response_class=PlainTextResponse,
             summary="The order as UN/EDIFACT ORDERS D.96A")
    async def order_edifact(po_id: Annotated[Identifier, Path()],
                            principal: Annotated[Principal, Depends(supplier_or_ops)]) -> Any:
        return PlainTextResponse(render_orders(await handlers.order(po_id, _supplier_scope(principal))),
                                 media_type="application/edifact")

    @app.post("/v1/orders/{po_id}/close", tags=["orders"], summary="Close an order (what is still open leaves on-order)")
    async def close(po_id: Annotated[Identifier, Path()], _: Annotated[Principal, Depends(ops_only)]) -> Any:
        return await handlers.close(po_id, None)

    # --- the supplier's own view --------------------------------------------------------------

    @app.post("/v1/suppliers/orders/{po_id}/ack", tags=["suppliers"], summary="Accept or reject an order")
    async def ack(po_id: Annotated[Identifier, Path()], body: AckIn,
                  principal: Annotated[Principal, Depends(supplier_only)]) -> Any:
        assert principal.scope is not None
        at = body.at or await handlers.event_time()
        return await handlers.acknowledge(SupplierAck(po_id=po_id, supplier_id=principal.scope,
                                                      decision=body.decision, reason=body.reason, acked_at=at))

    @app.post("/v1/suppliers/orders/{po_id}/ship", tags=["suppliers"], summary="Advance ship notice")
    async def ship(po_id: Annotated[Identifier, Path()], body: ShipNotice,
                   principal: Annotated[Principal, Depends(supplier_only)]) -> Any:
        return await handlers.ship(po_id, principal.scope, body.at)

    @app.get("/v1/suppliers/me/orders", tags=["suppliers"], summary="The supplier's open orders")
    async def my_orders(principal: Annotated[Principal, Depends(supplier_only)],
                        limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
        return await handlers.orders(supplier_id=principal.scope, open_only=True, limit=limit)

    @app.get("/v1/suppliers/me/stock", tags=["suppliers"],
             summary="The supplier's products at every store: stock, days of cover, the forecast to plan for")
    async def my_stock(principal: Annotated[Principal, Depends(supplier_only)],
                       limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> Any:
        assert principal.scope is not None
        return await handlers.supplier_products(principal.scope, limit)

    @app.get("/v1/suppliers/me/sell-through", tags=["suppliers"], summary="Units sold per product × store × day")
    async def my_sell_through(principal: Annotated[Principal, Depends(supplier_only)],
                              since: Annotated[date | None, Query()] = None,
                              sku: Annotated[Sku | None, Query()] = None,
                              store_id: Annotated[Identifier | None, Query()] = None,
                              limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> Any:
        assert principal.scope is not None
        return await handlers.sell_through(principal.scope, since=since, sku=sku, store_id=store_id, limit=limit)

    return app

