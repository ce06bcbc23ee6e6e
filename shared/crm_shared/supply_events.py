"""The supply side of the event contract: goods receipts, purchase orders, supplier answers, low stock.

Same envelope as every other event (`crm_shared.events.Envelope`); version 1 of each payload.
Event ids are derived from the fact they announce, so the same fact always has the same id
however often it is recomputed (a redelivery, a restart, a second replica).

| topic                     | payload                | key                | event_type            |
|---------------------------|------------------------|--------------------|-----------------------|
| inventory.receipts.v1     | `GoodsReceipt`         | store_id           | GoodsReceived         |
| supplier.reorders.v1      | `PurchaseOrder`        | supplier_id        | PurchaseOrderRaised   |
| supplier.acks.v1          | `SupplierAck`          | supplier_id        | SupplierAcknowledged  |
| inventory.low_stock.v1    | `LowStock`             | store_id:sku       | LowStockDetected      |
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from crm_shared.events import MAX_QUANTITY, PRINTABLE, AnyEnvelope, Envelope, Identifier, event_uuid
from crm_shared.money import Money

Sku = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1, max_length=64,
                                       pattern=PRINTABLE)]
SUPPLY_SCHEMA_VERSION = 1


class ReceiptLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    sku: Sku
    quantity: int = Field(strict=True, gt=0, le=MAX_QUANTITY, description="Units received; always positive")


class GoodsReceipt(BaseModel):
    """Goods arrived at a store, against a purchase order or not. Payload of `inventory.receipts.v1`."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    receipt_id: Identifier
    store_id: Identifier
    po_id: Identifier | None = Field(default=None, description="The purchase order delivered, when known")
    received_at: AwareDatetime
    lines: list[ReceiptLine] = Field(min_length=1, max_length=2000)


class OrderLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    sku: Sku
    quantity: int = Field(strict=True, gt=0, le=MAX_QUANTITY, description="Units ordered: whole packs, at least the MOQ")
    pack_size: int = Field(ge=1)
    unit_cost: Money | None = None
    need_id: uuid.UUID = Field(description="The need this line fills: one need, one line, ever")
    also_fills: list[uuid.UUID] = Field(default_factory=list,
                                        description="Needs of this sku from earlier cycles that missed their order")
    reorder_point: int
    order_up_to: int
    on_hand: int
    on_order: int = Field(description="On order before this line")
    forecast_daily: float


class PurchaseOrder(BaseModel):
    """One order per supplier × store × ordering cycle (an event-time day). Payload of `supplier.reorders.v1`."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    po_id: Identifier
    supplier_id: Identifier
    store_id: Identifier
    cycle: date = Field(description="The store's event-time day whose needs this order fills")
    raised_at: AwareDatetime
    expected_by: AwareDatetime = Field(description="raised_at + the longest lead time of its lines")
    lines: list[OrderLine] = Field(min_length=1)


class SupplierAck(BaseModel):
    """A supplier accepts or rejects a purchase order. Payload of `supplier.acks.v1`."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    po_id: Identifier
    supplier_id: Identifier
    decision: Literal["accepted", "rejected"]
    reason: Annotated[str, StringConstraints(max_length=300, pattern=PRINTABLE)] = ""
    acked_at: AwareDatetime


class LowStock(BaseModel):
    """A SKU at a store has fewer days of cover than the threshold. Payload of `inventory.low_stock.v1`:
    the notifier stops promoting what cannot be sold."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    store_id: Identifier
    sku: Sku
    on_hand: int
    on_order: int
    forecast_daily: float
    days_of_cover: float
    as_of: AwareDatetime


GoodsReceived = Envelope[GoodsReceipt]
PurchaseOrderRaised = Envelope[PurchaseOrder]
SupplierAcknowledged = Envelope[SupplierAck]
LowStockDetected = Envelope[LowStock]


def _envelope(payload: BaseModel, *, event_type: str, identity: str, occurred_at: datetime, key: str,
              source: str) -> Envelope[Any]:
    return AnyEnvelope(event_id=event_uuid(identity), event_type=event_type,
                       schema_version=SUPPLY_SCHEMA_VERSION, occurred_at=occurred_at, source=source, key=key,
                       payload=payload)


def goods_received(receipt: GoodsReceipt, *, source: str) -> Envelope[Any]:
    return _envelope(receipt, event_type="GoodsReceived", identity=f"receipt/{receipt.store_id}/{receipt.receipt_id}",
                     occurred_at=receipt.received_at, key=receipt.store_id, source=source)


def purchase_order_raised(order: PurchaseOrder, *, source: str) -> Envelope[Any]:
    return _envelope(order, event_type="PurchaseOrderRaised", identity=f"po/{order.po_id}",
                     occurred_at=order.raised_at, key=order.supplier_id, source=source)


def supplier_acknowledged(ack: SupplierAck, *, source: str) -> Envelope[Any]:
    return _envelope(ack, event_type="SupplierAcknowledged", identity=f"ack/{ack.po_id}/{ack.decision}",
                     occurred_at=ack.acked_at, key=ack.supplier_id, source=source)


def low_stock_detected(low: LowStock, *, source: str, identity: str) -> Envelope[Any]:
    """`identity` names the episode (store, sku, the day it was detected): one event per episode."""
    return _envelope(low, event_type="LowStockDetected", identity=f"low/{identity}", occurred_at=low.as_of,
                     key=f"{low.store_id}:{low.sku}", source=source)
