"""Offers deferred out of quiet hours, on real PostgreSQL: held until their `valid_from` by the wall
clock, then moved to the outbox earliest first (once: a second pass moves nothing); one still in the
future stays; erasing its member drops it, so it is never sent."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from crm_shared.marketing_events import OfferIssued, OfferReason, offer_event
from crm_shared.testing import StackEndpoints, fresh_tables
from notifier import store
from notifier.deferred import DeferredOffers
from sqlalchemy import select

pytestmark = pytest.mark.integration

TOPIC = "t.marketing.offers.v1"


def deferred(offer_id: str, member_id: str, valid_from: datetime) -> Any:
    return offer_event(OfferIssued(
        offer_id=offer_id, member_id=member_id, campaign_id="auto-cross-sell", channel="push", template="t",
        text="Beer goes with diapers", products=["beer"], discount_percent=Decimal("10"),
        reason=OfferReason(trigger="cross_sell", detail="diapers -> beer", source_event_id=uuid.uuid4()),
        store_id="s1", valid_from=valid_from, valid_to=valid_from + timedelta(days=7)))


async def scenario(database_url: str) -> dict[str, Any]:
    engine = await fresh_tables(database_url, "notifier_deferred", store.metadata)
    now = datetime.now(UTC)
    events = [deferred("later", "m-late", now + timedelta(hours=1)), deferred("due", "m1", now - timedelta(minutes=1)),
              deferred("due-first", "m2", now - timedelta(minutes=2))]
    try:
        async with engine.begin() as conn:
            await store.defer_offers(conn, events)
            await store.defer_offers(conn, events[:1])  # a recomputed decision holds nothing twice
        woken: list[bool] = []
        release = DeferredOffers(engine, topic=TOPIC, poll_seconds=0.1, wake_relay=lambda: woken.append(True))
        moved = [await release.release_due(), await release.release_due()]
        async with engine.connect() as conn:
            outbox = [(r.topic, orjson.loads(r.value)["payload"]["offer_id"], r.event_id) for r in await conn.execute(
                select(store.outbox).order_by(store.outbox.c.id))]
            held = list(await conn.scalars(select(store.deferred_offers.c.offer_id)))
        async with engine.begin() as conn:
            await store.erase(conn, "m-late", now, "pseudonym")
        async with engine.connect() as conn:
            after_erasure = await store.deferred_count(conn)
        return {"moved": moved, "outbox": outbox, "held": held, "woken": woken, "after_erasure": after_erasure,
                "event_ids": {e.payload.offer_id: e.event_id for e in events}}
    finally:
        await engine.dispose()


def test_deferred_offers_go_to_the_outbox_when_due_earliest_first_and_erasure_drops_them(
        crm_stack: StackEndpoints) -> None:
    seen = asyncio.run(scenario(crm_stack.database_url))
    assert seen["moved"] == [2, 0]
    ids = seen["event_ids"]
    assert seen["outbox"] == [(TOPIC, "due-first", ids["due-first"]), (TOPIC, "due", ids["due"])]
    assert seen["held"] == ["later"], "an offer valid from an hour ahead went out early"
    assert seen["woken"] == [True], "the relay is woken once, by the pass that moved offers"
    assert seen["after_erasure"] == 0, "an erased member's deferred offer would still be sent"
