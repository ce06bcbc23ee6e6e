"""Offers deferred out of quiet hours wait in `deferred_offers` until their `valid_from` by the wall
clock, then go to the outbox and on to `marketing.offers.v1`.

The decision transaction dates an offer triggered at 23:00 at 08:00 (`domain.deliverable_at`). In a
replay that time is long past and the offer goes to the outbox at once; in live traffic it is held
here, so a tool that sends what it reads never pushes at 23:00. Erasing the member drops what is held.
Replicas share the table: each pass claims due rows with `FOR UPDATE SKIP LOCKED`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from notifier import store

log = logging.getLogger(__name__)

HELD = Gauge("crm_notifier_offers_deferred", "Offers held until quiet hours end (their valid_from)")
RELEASED = Counter("crm_notifier_offers_deferred_released_total", "Deferred offers moved to the outbox when due")


class DeferredOffers:
    def __init__(self, engine: AsyncEngine, *, topic: str, poll_seconds: float, batch: int = 1000,
                 wake_relay: Callable[[], None] = lambda: None) -> None:
        self.engine = engine
        self.topic = topic
        self.poll_seconds = poll_seconds
        self.batch = batch
        self.wake_relay = wake_relay
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="notifier-deferred-offers")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def release_due(self) -> int:
        """One pass: move the due offers (at most `batch`) to the outbox, in one transaction."""
        async with self.engine.begin() as conn:
            moved = await store.release_deferred(conn, self.topic, self.batch)
            HELD.set(await store.deferred_count(conn))
        if moved:
            RELEASED.inc(moved)
            self.wake_relay()
            log.info("deferred offers released", extra={"offers": moved})
        return moved

    async def _run(self) -> None:
        while True:
            try:
                moved = await self.release_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database hiccuped: the rows wait for the next pass
                log.exception("deferred offers pass failed")
                moved = 0
            if moved < self.batch:
                await asyncio.sleep(self.poll_seconds)
