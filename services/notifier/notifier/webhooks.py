"""Webhook delivery of sent offers to a marketing tool: signed, retried with backoff, dead-lettered.

The decision transaction queues a `webhook_deliveries` row beside the offer (same transaction, so an
offer on the topic is an offer queued for the tool). This sender claims due rows with
`FOR UPDATE SKIP LOCKED` and keeps them locked while it posts them, so two replicas never post the
same offer at once; a 2xx marks the row delivered in the same transaction, and a delivered row is never
posted again. Each request carries:

- `X-CRM-Offer-Id` — the idempotency key (also the body's `payload.offer_id`),
- `X-CRM-Timestamp` — Unix seconds,
- `X-CRM-Signature` — `sha256=` HMAC-SHA256(secret, "<timestamp>." + body).

A failure (network error, timeout, non-2xx) is retried after 1 s, 2 s, 4 s … (capped), up to
`webhook_max_attempts`; then the row is `failed` and `OfferDeliveryFailed` goes to
`marketing.offer_webhooks.dlq` through the outbox. A 4xx other than 408/429 is not worth retrying and
fails at once. The one case HTTP cannot close: the tool accepted a post but this process died before
its commit — the row is posted again, with the same offer id header, for the tool to drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from crm_shared.marketing_events import OfferDeliveryFailed, delivery_failed_event
from crm_shared.outbox import add_events
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncEngine

from notifier import domain, store
from notifier.settings import NotifierSettings

log = logging.getLogger(__name__)

DELIVERIES = Counter("crm_notifier_webhook_attempts_total", "Webhook posts of offers", ["outcome"])
RETRYABLE_4XX = {408, 425, 429}


class WebhookSender:
    def __init__(self, engine: AsyncEngine, settings: NotifierSettings, *, dlq_topic: str,
                 wake_relay: Any = lambda: None) -> None:
        self.engine = engine
        self.settings = settings
        self.dlq_topic = dlq_topic
        self.wake_relay = wake_relay
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.settings.webhook_url)

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._client = httpx.AsyncClient(timeout=self.settings.webhook_timeout_seconds)
            self._task = asyncio.create_task(self._run(), name="notifier-webhooks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        while True:
            try:
                sent = await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database or the network hiccuped: try again shortly
                log.exception("webhook delivery pass failed")
                sent = 0
            if sent == 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.settings.webhook_idle_poll_seconds)

    async def deliver_due(self) -> int:
        """One pass: claim due deliveries, post them concurrently, record each outcome; commit."""
        assert self._client is not None
        async with self.engine.begin() as conn:
            due = await store.claim_webhooks(conn, self.settings.webhook_batch)
            if not due:
                return 0
            outcomes = await asyncio.gather(*(self._post(row) for row in due))
            failures = []
            for row, error in zip(due, outcomes, strict=True):
                attempts = int(row["attempts"]) + 1
                if error is None:
                    DELIVERIES.labels("delivered").inc()
                    await store.record_attempt(conn, row["offer_id"], status="delivered", attempts=attempts,
                                               retry_in_seconds=None, error=None)
                    continue
                final = attempts >= self.settings.webhook_max_attempts or error.startswith("refused")
                DELIVERIES.labels("failed" if final else "retry").inc()
                if final:
                    await store.record_attempt(conn, row["offer_id"], status="failed", attempts=attempts,
                                               retry_in_seconds=None, error=error[:500])
                    failures.append(OfferDeliveryFailed(
                        offer_id=row["offer_id"], member_id=_member_of(row["body"]), attempts=attempts,
                        last_error=error[:500], failed_at=datetime.now(UTC), body=row["body"]))
                else:
                    delay = domain.retry_delay(attempts, base_seconds=self.settings.webhook_retry_base_seconds,
                                               cap_seconds=self.settings.webhook_retry_cap_seconds)
                    await store.record_attempt(conn, row["offer_id"], status="pending", attempts=attempts,
                                               retry_in_seconds=delay, error=error[:500])
            await add_events(conn, store.outbox, self.dlq_topic, [delivery_failed_event(f) for f in failures])
        if failures:
            log.warning("offers dead-lettered after webhook retries", extra={"count": len(failures)})
            self.wake_relay()
        return len(due)

    async def _post(self, row: dict[str, Any]) -> str | None:
        """None when the tool took it; else why not ("refused …" when retrying cannot help)."""
        assert self._client is not None and self.settings.webhook_url
        body = row["body"].encode()
        stamp = int(time.time())
        headers = {"content-type": "application/json", "x-crm-offer-id": row["offer_id"],
                   "x-crm-timestamp": str(stamp),
                   "x-crm-signature": domain.webhook_signature(self.settings.webhook_secret, stamp, body)}
        try:
            response = await self._client.post(self.settings.webhook_url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return None
        if 400 <= response.status_code < 500 and response.status_code not in RETRYABLE_4XX:
            return f"refused with HTTP {response.status_code}"
        return f"HTTP {response.status_code}"


def _member_of(body: str) -> str:
    return str(orjson.loads(body)["payload"]["member_id"])
